"""Interval coverage: the 95 % bootstrap intervals on a test split with ISIC's shape and repeat photos."""

from __future__ import annotations

import numpy as np

from benchmarks.common import Context
from benchmarks.decision_rates import Rate, at_least
from skin.base.labels import CLASSES, ISIC2019_COUNTS
from skin.stats.bootstrap import confidence_intervals

RECALL = np.linspace(0.45, 0.85, len(CLASSES))  # the population truth, per class


def test_split(rng: np.random.Generator, scale: float) -> tuple[np.ndarray, ...]:
    """Labels, probabilities and lesion ids: 1-3 photos per lesion, one right-or-wrong per lesion."""
    lesions = np.repeat(
        np.arange(len(CLASSES)),
        [max(3, round(ISIC2019_COUNTS[c] * scale / 2)) for c in CLASSES],
    )
    hit = rng.random(len(lesions)) < RECALL[lesions]
    photos = rng.integers(1, 4, len(lesions))
    y, lesion = np.repeat(lesions, photos), np.repeat(np.arange(len(lesions)), photos)
    wrong = (y + rng.integers(1, len(CLASSES), len(y))) % len(CLASSES)
    pred = np.where(np.repeat(hit, photos), y, wrong)
    probs = rng.random((len(y), len(CLASSES))) * 0.5
    probs[np.arange(len(y)), pred] = 1.0
    return y, probs / probs.sum(1, keepdims=True), lesion


def rows(ctx: Context) -> list[Rate]:
    """How often each stated interval holds the truth, grouped by lesion as the pipeline does."""
    rng = np.random.default_rng(21)
    repeats, scale = ctx.pick((400, 0.1), (2000, 0.1))
    truth = RECALL.mean()
    hits = {"balanced accuracy": 0, "MEL recall": 0}
    mel = CLASSES.index("MEL")
    for r in range(repeats):
        y, probs, lesion = test_split(rng, scale)
        iv = confidence_intervals(y, probs, lesion, n_resamples=500, seed=r, auc=False)
        low, high = iv.scalars["balanced_accuracy"]
        hits["balanced accuracy"] += low <= truth <= high
        hits["MEL recall"] += iv.recall[mel][0] <= RECALL[mel] <= iv.recall[mel][1]
    note = f"test split of ~{round(sum(ISIC2019_COUNTS.values()) * scale)} images, 1-3 photos per lesion"
    return [
        at_least(f"{name} 95 % interval covers the truth", 0.95, n, repeats, note)
        for name, n in hits.items()
    ]
