"""Champion against challenger on the same images: the paired evidence the promotion gate reads.

Two models' dev scores recorded on different dev sets (another data version, another seed of the
split) cannot be compared. Here both are scored on the challenger's dev images, resampled together
(lesions, within class), and checked slice by slice (site, sex, age band).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from skin.bootstrap import PairedDifference, paired_bootstrap
from skin.slices import slice_table


@dataclass(frozen=True)
class SliceDrop:
    """One scored slice where the challenger's balanced accuracy falls below the champion's."""

    dimension: str
    value: str
    n: int
    champion: float
    challenger: float

    @property
    def drop(self) -> float:
        return self.champion - self.challenger


@dataclass(frozen=True)
class Comparison:
    """Both models on one set of images: the paired difference and the slices that got worse."""

    champion_version: str
    dataset: str  # the manifest hash whose dev images both were scored on
    difference: PairedDifference
    slices: list[SliceDrop] = field(default_factory=list)

    def worst_slice(self) -> SliceDrop | None:
        return max(self.slices, key=lambda s: s.drop, default=None)

    def tags(self) -> dict[str, str]:
        """The evidence as registry tags on the challenger's version."""
        d = self.difference
        worst = self.worst_slice()
        return {
            "gate.champion_version": self.champion_version,
            "gate.dataset": self.dataset,
            "gate.n": str(d.n),
            "gate.lesions": str(d.units),
            "gate.champion_balanced_accuracy": f"{d.champion:.4f}",
            "gate.challenger_balanced_accuracy": f"{d.challenger:.4f}",
            "gate.difference": f"{d.difference:+.4f}",
            "gate.difference_ci": f"[{d.low:+.4f}, {d.high:+.4f}]",
            "gate.worst_slice": _slice_name(worst) if worst else "none scored",
        }


def probabilities(frame: pd.DataFrame, classes: Sequence[str]) -> np.ndarray:
    """The `prob_<CLASS>` columns of a predictions frame, in class order."""
    missing = [f"prob_{c}" for c in classes if f"prob_{c}" not in frame]
    if missing:
        raise ValueError(f"predictions lack {missing}: scored with another class set")
    return frame[[f"prob_{c}" for c in classes]].to_numpy(dtype=np.float64)


def compare(
    dev: pd.DataFrame,
    champion_probs: np.ndarray,
    classes: Sequence[str],
    *,
    champion_version: str,
    dataset: str,
    n_resamples: int = 1000,
    seed: int = 0,
    min_slice_size: int = 30,
) -> Comparison:
    """Challenger (`dev`'s own `prob_*` columns) against the champion's probabilities on the same
    rows: the paired bootstrap of balanced accuracy and every scored slice's drop. Rows the
    champion could not score (NaN) are left out of both."""
    scored = np.isfinite(champion_probs).all(axis=1)
    if not scored.any():
        raise ValueError("the champion could not score any of the dev images")
    dev, champion_probs = dev[scored].reset_index(drop=True), champion_probs[scored]
    codes = dev["label"].map({c: i for i, c in enumerate(classes)})
    if codes.isna().any():
        raise ValueError(f"dev labels {sorted(set(dev['label']) - set(classes))} not in {classes}")
    y = codes.to_numpy(dtype=np.int64)
    groups = dev.get("lesion_id")
    challenger = probabilities(dev, classes)
    diff = paired_bootstrap(y, champion_probs, challenger, groups, n_resamples, seed)
    drops = slice_drops(dev, y, champion_probs, challenger, classes, groups, min_slice_size)
    return Comparison(champion_version, dataset, diff, drops)


def score_champion(
    ref: str, dev: pd.DataFrame, classes: Sequence[str], *, tta: bool, tracking_uri: str | None
) -> np.ndarray:
    """The champion's probabilities for the challenger's dev images, decoded and cropped the
    way the champion itself was evaluated (its own input size); NaN rows where an image failed."""
    from skin.predict import load_predictor
    from skin.storage import open_store

    champion = load_predictor(ref, tta=tta, tracking_uri=tracking_uri)
    if tuple(champion.classes) != tuple(classes):
        raise ValueError(f"champion {ref} predicts {champion.classes}, not {tuple(classes)}")
    probs = np.full((len(dev), len(classes)), np.nan)
    for source, rows in dev.groupby("source").indices.items():
        scored = champion.score(dev["key"].iloc[rows].tolist(), open_store(str(source)).get)
        probs[rows] = probabilities(scored, classes)
    return probs


def dev_comparison(
    predictions: Path,
    classes: Sequence[str],
    *,
    dataset: str,
    tta: bool,
    tracking_uri: str | None,
    n_resamples: int,
    seed: int,
    min_slice_size: int,
) -> Callable[[str], Comparison] | None:
    """What the gate calls with the champion's reference: the champion scored on the challenger's
    dev images (`predictions`: the evaluate stage's `predictions_dev.parquet`), then compared."""
    if not predictions.is_file():
        return None
    dev = pd.read_parquet(predictions)

    def run(champion_ref: str) -> Comparison:
        probs = score_champion(champion_ref, dev, classes, tta=tta, tracking_uri=tracking_uri)
        version = champion_ref.rsplit("/", 1)[-1]
        return compare(dev, probs, classes, champion_version=version, dataset=dataset,
                       n_resamples=n_resamples, seed=seed, min_slice_size=min_slice_size)  # fmt: skip

    return run


def slice_drops(
    meta: pd.DataFrame,
    y: np.ndarray,
    champion: np.ndarray,
    challenger: np.ndarray,
    classes: Sequence[str],
    groups: pd.Series | None,
    min_size: int,
) -> list[SliceDrop]:
    """Scored slices (≥ min_size images) where the challenger is below the champion."""
    kwargs = {"groups": groups, "min_size": min_size, "n_resamples": 0}
    a = slice_table(meta, y, champion, classes, **kwargs)
    b = slice_table(meta, y, challenger, classes, **kwargs)
    both = a.merge(b, on=["dimension", "value", "n"], suffixes=("_a", "_b"))
    both = both[both["scored_a"] & (both["balanced_accuracy_b"] < both["balanced_accuracy_a"])]
    return [
        SliceDrop(r.dimension, r.value, int(r.n), r.balanced_accuracy_a, r.balanced_accuracy_b)
        for r in both.itertuples(index=False)
    ]


def _slice_name(s: SliceDrop) -> str:
    return f"{s.dimension}/{s.value} (n={s.n}): {s.challenger:.4f} vs {s.champion:.4f}"


def promotion_markdown(comparison: Comparison | None, alias: str, reason: str) -> str:
    """`promotion.md`: the decision and the evidence it rests on."""
    lines = ["# Promotion decision", "", f"**{alias}**: {reason}", ""]
    if comparison is None:
        return "\n".join([*lines, "No paired comparison was made.", ""])
    d = comparison.difference
    lines += [
        f"Both models scored on the same {d.n} dev images ({d.units} lesions) of dataset"
        f" version `{comparison.dataset}`, against champion v{comparison.champion_version}.",
        "",
        "| | balanced accuracy |",
        "|---|---|",
        f"| champion | {d.champion:.4f} |",
        f"| challenger | {d.challenger:.4f} |",
        f"| difference | {d.difference:+.4f} (95 % CI {d.low:+.4f} to {d.high:+.4f},"
        f" {d.n_resamples} paired resamples) |",
        "",
    ]
    if comparison.slices:
        lines += ["Slices where the challenger is worse:", ""]
        lines += [f"- {_slice_name(s)}, drop {s.drop:.4f}" for s in comparison.slices]
    else:
        lines.append("No scored slice where the challenger is worse.")
    return "\n".join([*lines, ""])
