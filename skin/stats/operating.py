"""Clinical operating points: a threshold chosen on dev for a target specificity, read on test."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from skin.stats.bootstrap import (
    Groups,
    check_predictions,
    percentile_interval,
    ratio,
    resample_sums,
)

log = logging.getLogger(__name__)

MALIGNANT = ("MEL", "BCC", "SCC")
TARGETS = (0.90, 0.95)


@dataclass(frozen=True)
class OperatingPoint:
    """One question ("mel", "malignant") at one target specificity: dev threshold, test reading."""

    name: str
    target: float
    threshold: float  # positive when score >= threshold; chosen on dev
    dev_sensitivity: float
    dev_specificity: float
    sensitivity: float  # on test
    specificity: float
    sensitivity_ci: tuple[float, float]  # (nan, nan) when the bootstrap is off
    specificity_ci: tuple[float, float]
    n_positive: int  # test images
    n_negative: int


def questions(classes: Sequence[str], malignant: Sequence[str] = MALIGNANT) -> dict[str, list[int]]:
    """The binary questions this class set can answer: name -> columns counted as positive."""
    wanted = {"mel": ["MEL"], "malignant": list(malignant)}
    out = {}
    for name, names in wanted.items():
        columns = [classes.index(c) for c in names if c in classes]
        if columns and len(columns) < len(classes):
            out[name] = columns
        else:
            log.info(
                "no %s operating point: classes %s lack a positive/negative split", name, classes
            )
    return out


def threshold_at_specificity(scores: np.ndarray, positive: np.ndarray, target: float) -> float:
    """The smallest dev score whose dev specificity (negatives below it) reaches `target`."""
    if not 0 < target <= 1:
        raise ValueError(f"target specificity must be in (0, 1], got {target}")
    negatives = np.sort(scores[~positive])
    if len(negatives) == 0:
        raise ValueError("dev has no negative image: no specificity to aim for")
    need = math.ceil(target * len(negatives) - 1e-9)  # negatives that must fall below
    candidates = np.unique(scores)
    enough = np.searchsorted(negatives, candidates, side="left") >= need
    if enough.any():
        return float(candidates[np.argmax(enough)])
    return float(np.nextafter(negatives[-1], np.inf))


def rates(scores: np.ndarray, positive: np.ndarray, threshold: float) -> tuple[float, float]:
    """Sensitivity and specificity when score >= threshold calls positive (nan if a side is empty)."""
    called = scores >= threshold
    sens = called[positive].mean() if positive.any() else np.nan
    spec = (~called[~positive]).mean() if (~positive).any() else np.nan
    return float(sens), float(spec)


@dataclass(frozen=True)
class Threshold:
    """A threshold chosen on dev: question, its positive columns, target specificity, value."""

    name: str
    columns: tuple[int, ...]
    target: float
    value: float


def choose_thresholds(
    y: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    targets: Sequence[float] = TARGETS,
    malignant: Sequence[str] = MALIGNANT,
) -> list[Threshold]:
    """Every question's threshold at every target, from dev labels and probabilities alone."""
    check_predictions(y, probs, "dev probs")
    out = []
    for name, columns in questions(list(classes), malignant).items():
        positive = np.isin(y, columns)
        if not positive.any() or positive.all():
            log.warning("no %s operating point: dev lacks positives or negatives", name)
            continue
        score = probs[:, columns].sum(1)
        for target in targets:
            t = threshold_at_specificity(score, positive, target)
            out.append(Threshold(name, tuple(columns), target, t))
    return out


def operating_points(
    dev: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    classes: Sequence[str],
    test_groups: Groups = None,
    targets: Sequence[float] = TARGETS,
    malignant: Sequence[str] = MALIGNANT,
    n_resamples: int = 1000,
    seed: int = 0,
) -> list[OperatingPoint]:
    """Thresholds chosen on dev (labels, probs), then sensitivity/specificity on test with intervals."""
    chosen = choose_thresholds(*dev, classes, targets, malignant)
    y, probs = test
    check_predictions(y, probs, "test probs")
    cis = [((np.nan, np.nan), (np.nan, np.nan))] * len(chosen)
    if chosen and n_resamples > 0:
        cis = _intervals(chosen, y, probs, test_groups, n_resamples, seed)
    points = []
    for t, (sens_ci, spec_ci) in zip(chosen, cis, strict=True):
        dev_rates = rates(dev[1][:, t.columns].sum(1), np.isin(dev[0], t.columns), t.value)
        pos = np.isin(y, t.columns)
        sens, spec = rates(probs[:, t.columns].sum(1), pos, t.value)
        n_pos, n_neg = int(pos.sum()), int((~pos).sum())
        points.append(
            OperatingPoint(
                t.name, t.target, t.value, *dev_rates, sens, spec, sens_ci, spec_ci, n_pos, n_neg
            )
        )
    return points


def _intervals(
    chosen: Sequence[Threshold], y: np.ndarray, probs: np.ndarray, groups: Groups, n: int, seed: int
) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """Sensitivity and specificity intervals on test, every threshold on the same resamples."""
    features = []
    for t in chosen:
        pos, called = np.isin(y, t.columns), probs[:, t.columns].sum(1) >= t.value
        features += [pos & called, pos, ~pos & ~called, ~pos]
    sums = resample_sums(np.array(features, dtype=float).T, y, groups, n, seed)
    sums = sums.reshape(n, len(chosen), 4)
    rates_ = np.stack([ratio(sums[..., 0], sums[..., 1]), ratio(sums[..., 2], sums[..., 3])], -1)
    low, high = percentile_interval(rates_)
    return [
        ((float(lo[0]), float(hi[0])), (float(lo[1]), float(hi[1])))
        for lo, hi in zip(low, high, strict=True)
    ]


def threshold_name(point: OperatingPoint) -> str:
    """`mel_threshold_at_spec90`: how a threshold is named in metrics and beside the model."""
    return f"{point.name}_threshold_at_spec{round(point.target * 100)}"


def flat_operating(points: Sequence[OperatingPoint], split: str = "test") -> dict[str, float]:
    """`test_mel_sensitivity_at_spec90` (+ `_ci_low/_ci_high`), specificity, `mel_threshold_at_spec90`."""
    out: dict[str, float] = {}
    for p in points:
        at = f"at_spec{round(p.target * 100)}"
        out[threshold_name(p)] = p.threshold
        out[f"dev_{p.name}_sensitivity_{at}"] = p.dev_sensitivity
        for metric, value, (low, high) in (
            ("sensitivity", p.sensitivity, p.sensitivity_ci),
            ("specificity", p.specificity, p.specificity_ci),
        ):
            out[f"{split}_{p.name}_{metric}_{at}"] = value
            if not np.isnan(low):
                out[f"{split}_{p.name}_{metric}_{at}_ci_low"] = low
                out[f"{split}_{p.name}_{metric}_{at}_ci_high"] = high
    return {k: v for k, v in out.items() if not np.isnan(v)}
