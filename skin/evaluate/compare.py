"""Champion against challenger on the same images: the paired evidence the promotion gate reads.

Two models' dev scores recorded on different dev sets (another data version, another seed of the
split) cannot be compared. Here both are scored on the challenger's dev images, resampled together
(lesions, within class), and checked slice by slice (site, sex, age band).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from skin.data import manifest as mf
from skin.data.storage import open_store
from skin.evaluate.provenance import UNSEEN, model_manifests, seen_by_model
from skin.stats.bootstrap import (
    PairedDifference,
    balanced_from_recall,
    group_codes,
    hit_features,
    paired_bootstrap,
    recall_from_sums,
)
from skin.stats.slices import slice_values
from skin.track.refs import ModelRef, VersionRef
from skin.track.tracking import MLflowRegistry

SLICE_ALPHA = 0.05  # family-wise: how often a challenger no worse on any slice is blocked
SLICE_MIN_LESIONS = 5  # a class counts in a slice's balanced accuracy from this many lesions
MIN_PAIRED_IMAGES = 30  # registry.min_paired_images: fewer unseen dev images, no paired gate


class NotComparableError(ValueError):
    """Too few dev images are left that the champion never trained on; says how many and why."""


@dataclass(frozen=True)
class SliceDrop:
    """One scored slice where the challenger's balanced accuracy falls below the champion's,
    with the upper bound of its difference (challenger - champion) at one-sided `level`."""

    dimension: str
    value: str
    n: int  # images of the classes counted there (>= SLICE_MIN_LESIONS lesions in the slice)
    champion: float
    challenger: float
    high: float = float("nan")  # nan when the bootstrap is off
    level: float = float("nan")  # one-sided, corrected for the number of slices scored

    @property
    def drop(self) -> float:
        return self.champion - self.challenger

    def shows_drop_beyond(self, max_drop: float) -> bool:
        """A drop both material and shown: the point drop exceeds `max_drop` and the upper bound
        lies below 0 (a slice no worse in truth blocks with probability <= the corrected alpha;
        bounding below -max_drop instead missed a 0.25 loss on a 120-image slice 3 times in 10).
        Without a bootstrap only the point estimate is there to read."""
        if self.high != self.high:
            return self.drop > max_drop
        return self.drop > max_drop and self.high < 0


@dataclass(frozen=True)
class Comparison:
    """Both models on one set of images: the paired difference and the slices that got worse."""

    champion_version: str
    dataset: str  # the manifest hash whose dev images both were scored on
    difference: PairedDifference
    slices: list[SliceDrop] = field(default_factory=list)
    slices_scored: int = 0  # slices of >= min_slice_size images: the Bonferroni family
    # Dev images left out because the champion trained on them, by why (key, file, lesion).
    excluded: dict[str, int] = field(default_factory=dict)

    def worst_slice(self) -> SliceDrop | None:
        return max(self.slices, key=lambda s: s.drop, default=None)

    def clearest_drop(self) -> SliceDrop | None:
        """The worse slice whose upper bound lies lowest: the one nearest to blocking."""
        bounded = [s for s in self.slices if s.high == s.high]
        return min(bounded, key=lambda s: s.high, default=None) or self.worst_slice()

    def blocking_slice(self, max_drop: float) -> SliceDrop | None:
        """The clearest of the slices whose evidence shows a drop beyond `max_drop`, if any."""
        shown = [s for s in self.slices if s.shows_drop_beyond(max_drop)]
        return min(shown, key=lambda s: s.high if s.high == s.high else -s.drop, default=None)

    def tags(self) -> dict[str, str]:
        """The evidence as registry tags on the challenger's version."""
        d = self.difference
        worst, clearest = self.worst_slice(), self.clearest_drop()
        n_excluded = sum(self.excluded.values())
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
            "gate.slices_scored": str(self.slices_scored),
            "gate.slice_evidence": _slice_evidence(clearest) if clearest else "no slice worse",
            "gate.excluded": str(n_excluded),
            "gate.excluded_why": _excluded_text(self.excluded) if n_excluded else "none",
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
    slice_alpha: float = SLICE_ALPHA,
    excluded: pd.Series | None = None,
    min_images: int = 1,
) -> Comparison:
    """Challenger (`dev`'s own `prob_*` columns) against the champion's probabilities on the same
    rows: the paired bootstrap of balanced accuracy and every scored slice's drop with its
    corrected bound. Rows the champion could not score (NaN) are left out of both, and so are
    the rows `excluded` names (per dev row: why the champion has seen it, as
    `skin.evaluate.provenance.seen_reasons` gives; UNSEEN where it has not). Fewer than `min_images`
    left: NotComparableError."""
    seen = _seen(dev, excluded)
    left_out = {str(why): int(n) for why, n in seen[seen != UNSEEN].value_counts().items()}
    scored = np.isfinite(champion_probs).all(axis=1) & (seen == UNSEEN).to_numpy()
    _check_enough(int(scored.sum()), len(dev), left_out, min_images)
    dev, champion_probs = dev[scored].reset_index(drop=True), champion_probs[scored]
    codes = dev["label"].map({c: i for i, c in enumerate(classes)})
    if codes.isna().any():
        raise ValueError(f"dev labels {sorted(set(dev['label']) - set(classes))} not in {classes}")
    y = codes.to_numpy(dtype=np.int64)
    groups = dev.get("lesion_id")
    challenger = probabilities(dev, classes)
    diff = paired_bootstrap(y, champion_probs, challenger, groups, n_resamples, seed)
    scored = scored_slices(dev, min_slice_size)
    drops = slice_drops(dev, y, champion_probs, challenger, classes, groups, min_slice_size,
                        n_resamples=n_resamples, seed=seed, alpha=slice_alpha, scored=scored)  # fmt: skip
    return Comparison(champion_version, dataset, diff, drops, len(scored), left_out)


def _seen(dev: pd.DataFrame, excluded: pd.Series | None) -> pd.Series:
    """Why each dev row is left out (UNSEEN: it is not), aligned with `dev`'s rows."""
    if excluded is None:
        return pd.Series(UNSEEN, index=range(len(dev)), dtype=object)
    if len(excluded) != len(dev):
        raise ValueError(f"excluded: {len(excluded)} reasons for {len(dev)} dev rows")
    return excluded.reset_index(drop=True).fillna(UNSEEN)


def _check_enough(n: int, total: int, left_out: dict[str, int], min_images: int) -> None:
    """Refuse a comparison on too few images, saying how many were left out and why."""
    if n == 0 and not left_out:
        raise ValueError("the champion could not score any of the dev images")
    if n < max(min_images, 1):
        why = f" ({_excluded_text(left_out)})" if left_out else ""
        raise NotComparableError(
            f"only {n} of {total} dev images are left that the champion never trained on and"
            f" could score; {sum(left_out.values())} it trained on{why}; fewer than"
            f" registry.min_paired_images {min_images}"
        )


def score_champion(
    ref: ModelRef | str,
    dev: pd.DataFrame,
    classes: Sequence[str],
    *,
    tta: bool,
    tracking_uri: str | None,
) -> np.ndarray:
    """The champion's probabilities for the challenger's dev images, decoded and cropped the
    way the champion itself was evaluated (its own input size); NaN rows where an image failed."""
    # torch and timm behind it: only when a champion is scored, not when a registration is read
    from skin.serve.loading import load_predictor

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
    slice_alpha: float = SLICE_ALPHA,
    manifest_uri: str | None = None,
    min_images: int = MIN_PAIRED_IMAGES,
) -> Callable[[VersionRef], Comparison] | None:
    """What the gate calls with the champion's reference: the champion scored on the challenger's
    dev images (`predictions`: the evaluate stage's `predictions_dev.parquet`) that it never
    trained on (same key, identical file per `manifest_uri`'s fingerprints, same lesion), then
    compared."""
    if not predictions.is_file():
        return None
    dev = with_fingerprints(pd.read_parquet(predictions), manifest_uri)

    def run(champion_ref: VersionRef) -> Comparison:
        seen = seen_by_model(champion_manifests(champion_ref, tracking_uri), dev)
        unseen = (seen == UNSEEN).to_numpy()
        probs = np.full((len(dev), len(classes)), np.nan)
        if unseen.sum() >= min_images:  # else compare says why, without scoring in vain
            rows = dev[unseen].reset_index(drop=True)
            probs[unseen] = score_champion(
                champion_ref, rows, classes, tta=tta, tracking_uri=tracking_uri
            )
        return compare(dev, probs, classes, champion_version=champion_ref.version, dataset=dataset,
                       n_resamples=n_resamples, seed=seed, min_slice_size=min_slice_size,
                       slice_alpha=slice_alpha, excluded=seen, min_images=min_images)  # fmt: skip

    return run


def champion_manifests(ref: ModelRef | str, tracking_uri: str | None) -> dict[str, pd.DataFrame]:
    """What the champion trained on (each member's manifest for an ensemble), through MLflow."""
    with tempfile.TemporaryDirectory(prefix="skin-champion-") as tmp:
        return model_manifests(MLflowRegistry(tracking_uri), ref, Path(tmp))


def with_fingerprints(dev: pd.DataFrame, manifest_uri: str | None) -> pd.DataFrame:
    """Dev predictions with each image's content fingerprint from the challenger's manifest
    (predictions files do not carry it), so an identical file under another key is found."""
    if manifest_uri is None or "fingerprint" in dev:
        return dev
    fingerprints = mf.read(manifest_uri).set_index("key")["fingerprint"]
    return dev.assign(fingerprint=dev["key"].map(fingerprints).to_numpy())


def scored_slices(meta: pd.DataFrame, min_size: int) -> list[tuple[str, str, np.ndarray]]:
    """(dimension, value, rows) of every slice with at least `min_size` images."""
    out = []
    for dim, values in slice_values(meta).items():
        names = values.to_numpy()
        for value in sorted(values.unique()):
            rows = np.flatnonzero(names == value)
            if len(rows) >= min_size:
                out.append((dim, value, rows))
    return out


def slice_level(alpha: float, n_slices: int) -> float:
    """One-sided level of each slice's bound: Bonferroni over the slices scored, so a challenger
    no worse than `max_slice_drop` anywhere is blocked with probability <= alpha."""
    return 1 - alpha / max(n_slices, 1)


def slice_drops(
    meta: pd.DataFrame,
    y: np.ndarray,
    champion: np.ndarray,
    challenger: np.ndarray,
    classes: Sequence[str],
    groups: pd.Series | None,
    min_size: int,
    *,
    n_resamples: int = 0,
    seed: int = 0,
    alpha: float = SLICE_ALPHA,
    scored: list[tuple[str, str, np.ndarray]] | None = None,
) -> list[SliceDrop]:
    """Scored slices (>= min_size images) where the challenger is below the champion, each with
    the paired-bootstrap (lesions, within class) upper bound of its difference at
    `slice_level(alpha, slices scored)`. A slice's balanced accuracy averages the recall of the
    classes with >= SLICE_MIN_LESIONS lesions in it: one from fewer is noise a class-stratified
    bootstrap cannot see (one lesion: no variance at all)."""
    scored = scored_slices(meta, min_size) if scored is None else scored
    level = slice_level(alpha, len(scored))
    codes = group_codes(y, groups)
    n_classes = champion.shape[1]
    out = []
    for dim, value, rows in scored:
        rows = _counted_rows(rows, y, codes)
        if len(rows) == 0:
            continue
        a, b = (_balanced(y[rows], p[rows], n_classes) for p in (champion, challenger))
        if b >= a:
            continue  # not worse: no bound needed
        d = paired_bootstrap(y[rows], champion[rows], challenger[rows], codes[rows],
                             n_resamples, seed, level=2 * level - 1, normal=True)  # fmt: skip
        out.append(SliceDrop(dim, value, len(rows), d.champion, d.challenger, d.high, level))
    return out


def _counted_rows(rows: np.ndarray, y: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """The slice's rows of the classes with at least SLICE_MIN_LESIONS lesions in it."""
    lesions = pd.Series(codes[rows]).groupby(y[rows]).nunique()
    counted = lesions.index[lesions >= SLICE_MIN_LESIONS].to_numpy()
    return rows[np.isin(y[rows], counted)]


def _balanced(y: np.ndarray, probs: np.ndarray, n_classes: int) -> float:
    """Balanced accuracy over the classes present (the bootstrap's point estimate, cheaply)."""
    return float(balanced_from_recall(recall_from_sums(
        hit_features(y, probs.argmax(1), n_classes).sum(0))))  # fmt: skip


def _slice_name(s: SliceDrop) -> str:
    return f"{s.dimension}/{s.value} (n={s.n}): {s.challenger:.4f} vs {s.champion:.4f}"


def _slice_evidence(s: SliceDrop) -> str:
    """A slice's difference with its corrected upper bound: what the slice rule reads."""
    if s.high != s.high:
        return f"{s.dimension}/{s.value} (n={s.n}): difference {-s.drop:+.4f}, no bootstrap"
    return (
        f"{s.dimension}/{s.value} (n={s.n}): difference {-s.drop:+.4f}, upper one-sided"
        f" {100 * s.level:.2f} % bound {s.high:+.4f}"
    )


def _excluded_text(excluded: dict[str, int]) -> str:
    return ", ".join(f"{n} {why}" for why, n in excluded.items() if n)


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
    if comparison.excluded:
        lines += [
            f"Left out of both sides: {sum(comparison.excluded.values())} dev images the champion"
            f" trained on ({_excluded_text(comparison.excluded)}).",
            "",
        ]
    return "\n".join([*lines, *slice_lines(comparison), ""])


def slice_lines(comparison: Comparison) -> list[str]:
    """promotion.md's slice evidence: each worse slice with its corrected upper bound."""
    n = comparison.slices_scored
    if not comparison.slices:
        return [f"No scored slice (of {n}) where the challenger is worse."]
    level = comparison.slices[0].level
    lines = [
        f"Slices where the challenger is worse ({len(comparison.slices)} of {n} scored). A slice"
        " blocks only when its drop exceeds registry.max_slice_drop and the upper bound of its"
        " difference lies below 0;"
        f" each bound is one-sided at {100 * level:.2f} % (Bonferroni over {n} slices).",
        "",
    ]
    return lines + [f"- {_slice_evidence(s)}; drop {s.drop:.4f}" for s in comparison.slices]
