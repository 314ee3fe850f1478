"""What a model trained on: its runs' manifests (every member's, for an ensemble), and which
images of another table it has seen (the same key, an identical file or the same lesion).

A model scored on images it trained on is flattered: the ensemble command refuses such members,
and the promotion gate leaves such dev images out of the paired comparison.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from skin.data import manifest as mf
from skin.track.refs import ModelRef, ModelRefError, RunRef, as_model_ref
from skin.track.tracking import MissingRecordError, MLflowRegistry, TrackingError

log = logging.getLogger(__name__)

SEEN_BY = {"key": "same key", "fingerprint": "identical file", "lesion_id": "same lesion"}
UNSEEN = ""


class ProvenanceError(ValueError):
    """What a model trained on cannot be read; says which model and why."""


def trained_rows(manifest: pd.DataFrame) -> pd.DataFrame:
    """The rows a model of this manifest trained on: train, kept after balancing."""
    return manifest[(manifest["split"] == "train") & manifest["keep"].astype(bool)]


def seen_reasons(trained: pd.DataFrame, rows: pd.DataFrame) -> pd.Series:
    """Per row of `rows`, why a model that trained on `trained` has seen it (a SEEN_BY value,
    the first that applies), or UNSEEN; a missing lesion id or fingerprint ties nothing."""
    why = pd.Series(UNSEEN, index=rows.index, dtype=object)
    for column, reason in reversed(SEEN_BY.items()):  # the first reason wins: set it last
        if column not in rows or column not in trained:
            continue
        known = trained[column].dropna()
        known = known[known.astype(str) != ""]
        why[rows[column].notna() & rows[column].isin(known)] = reason
    return why


def run_manifests(
    registry: MLflowRegistry, refs: list[str] | list[ModelRef], dst: Path
) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Each model's training manifest, read through its MLflow run (run ids, runs:/, models:/),
    and the references that record none (checkpoint files); keyed by the references as given."""
    out, unknown = {}, []
    for i, given in enumerate(refs):
        ref = as_model_ref(given)
        if not ref.is_mlflow:  # a checkpoint file: nothing records what it trained on
            unknown.append(str(given))
            continue
        out[str(given)] = mf.read(registry.run_manifest(registry.source_run(ref), dst / str(i)))
    return out, unknown


def model_manifests(
    registry: MLflowRegistry, ref: ModelRef | str, dst: Path
) -> dict[str, pd.DataFrame]:
    """What the model `ref` trained on: its run's manifest, or each member's for an ensemble
    (whose own run's manifest is the one it was evaluated on, not trained on)."""
    try:
        ref = as_model_ref(ref)
        run_id = registry.source_run(ref)
        members = registry.ensemble_members(run_id, dst / "members")
        refs = members if members is not None else [str(RunRef(run_id))]
        found, unknown = run_manifests(registry, refs, dst)
    except (ModelRefError, TrackingError, MissingRecordError, mf.ManifestError) as err:
        raise ProvenanceError(f"what {ref} trained on cannot be read: {err}") from err
    if unknown:
        raise ProvenanceError(
            f"what {ref} trained on cannot be read: its members {unknown} are checkpoint files,"
            " which record no manifest"
        )
    return found


def seen_by_model(manifests: dict[str, pd.DataFrame], rows: pd.DataFrame) -> pd.Series:
    """Per row, why one of the models behind `manifests` (an ensemble: the union of its
    members) has seen it, or UNSEEN."""
    trained = pd.concat([trained_rows(m) for m in manifests.values()], ignore_index=True)
    return seen_reasons(trained, rows)
