"""What a model trained on (skin/evaluate/provenance.py): a run's manifest, an ensemble's members', and why
a row was seen."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from skin.evaluate.provenance import UNSEEN, ProvenanceError, model_manifests, seen_reasons
from skin.search.ensemble import Member, write_members
from skin.serve import pyfunc as serving
from skin.track.tracking import MLflowRegistry, MLflowTracker, tracked_run
from tests.helpers import tracking_db
from tests.serve.test_predict import tiny_checkpoints


def manifest(keys: list[str], split: str, lesion: str) -> pd.DataFrame:
    return pd.DataFrame({"key": keys, "label": "NV", "split": split, "keep": True,
                         "fingerprint": [f"f-{k}" for k in keys], "source": "s",
                         "lesion_id": [f"{lesion}{i}" for i in range(len(keys))]})  # fmt: skip


def test_a_row_is_seen_by_key_then_file_then_lesion() -> None:
    trained = pd.DataFrame({"key": ["a", "b", "c"], "fingerprint": ["fa", "fx", None],
                            "lesion_id": ["La", None, "Lc"]})  # fmt: skip
    rows = pd.DataFrame({"key": ["a", "z1", "z2", "z3", "z4"],
                         "fingerprint": ["fa", "fx", "fz", None, "fw"],
                         "lesion_id": ["La", None, "Lc", None, "Lw"]})  # fmt: skip
    got = seen_reasons(trained, rows).tolist()
    assert got == ["same key", "identical file", "same lesion", UNSEEN, UNSEEN], got


@pytest.mark.slow
def test_an_ensembles_training_is_the_union_of_its_members_runs(tmp_path: Path) -> None:
    """A logged ensemble's run names its evaluation manifest; what it trained on is read from
    each member's run, through the members.json inside its logged model."""
    uri = tracking_db(tmp_path)
    runs = []
    for i in range(2):
        path = tmp_path / f"manifest{i}.parquet"
        manifest([f"k{i}-{j}" for j in range(3)], "train", f"L{i}-").to_parquet(path)
        tracker = MLflowTracker(uri, "provenance")
        with tracked_run(tracker):
            tracker.set_tags({"manifest_uri": str(path)})
        runs.append(tracker.run_id)
    ckpts = tiny_checkpoints(tmp_path / "checkpoints")
    folder = tmp_path / "ens"
    write_members([Member(ckpts[1], 1.0, f"runs:/{r}/model") for r in runs], folder)
    evaluated = tmp_path / "evaluated.parquet"
    manifest(["e0"], "dev", "E").to_parquet(evaluated)
    tracker = MLflowTracker(uri, "provenance")
    with tracked_run(tracker):
        tracker.set_tags({"manifest_uri": str(evaluated)})
        serving.log_ensemble(tracker, folder / "members.json", None)
    registry = MLflowRegistry(uri)

    found = model_manifests(registry, f"runs:/{tracker.run_id}/model", tmp_path / "dl")
    assert sorted(found) == sorted(f"runs:/{r}/model" for r in runs), found.keys()
    keys = sorted(k for m in found.values() for k in m["key"])
    assert keys == sorted(f"k{i}-{j}" for i in range(2) for j in range(3)), keys
    single = model_manifests(registry, runs[0], tmp_path / "one")
    assert list(single) == [f"runs:/{runs[0]}/model"]

    write_members([Member(ckpts[1], 1.0, str(ckpts[1]))], tmp_path / "files")
    tracker = MLflowTracker(uri, "provenance")
    with tracked_run(tracker):
        serving.log_ensemble(tracker, tmp_path / "files" / "members.json", None)
    with pytest.raises(ProvenanceError, match="checkpoint files, which record no manifest"):
        model_manifests(registry, tracker.run_id, tmp_path / "files-dl")
