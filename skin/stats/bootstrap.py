"""Bootstrap confidence intervals: lesions resampled within each class, every resample at once.

Groups (lesions; an image without a lesion id is its own group) are drawn with replacement
within their class, so each class keeps its number of groups. Most metrics are ratios of sums
over images (hits, images, ...): such sums are drawn for all resamples at once, from how many
times each kind of group is drawn (a multinomial draw when few kinds, else indices and bincount).
AUC, a rank statistic, uses a matrix of image weights instead. Intervals are percentile intervals
(not BCa, whose acceleration term needs a jackknife over lesions).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

LEVEL = 0.95
CHUNK_CELLS = 1 << 23  # draws held at once: 64 MB of int64
AUC_CELLS = 1 << 17  # image weights per AUC step: 1 MB of float64, kept in cache

Groups = Sequence | np.ndarray | pd.Series | None


@dataclass(frozen=True)
class Intervals:
    """`scalars[metric] = (low, high)`; `recall[class index] = (low, high)` for classes present."""

    scalars: dict[str, tuple[float, float]]
    recall: dict[int, tuple[float, float]]
    n_resamples: int
    units: int  # lesions (or images without a lesion id) that were resampled


@dataclass(frozen=True)
class PairedDifference:
    """Both models' balanced accuracy on the same images; challenger - champion with its interval."""

    champion: float
    challenger: float
    difference: float
    low: float  # nan when the bootstrap is off
    high: float
    n: int
    units: int
    n_resamples: int


def check_predictions(y: np.ndarray, probs: np.ndarray, what: str = "probs") -> None:
    """Refuse labels and probabilities that do not fit together, naming the object."""
    if y.ndim != 1 or probs.ndim != 2 or len(y) != len(probs):
        raise ValueError(
            f"{what}: want labels [N] and {what} [N, C], got {y.shape} and {probs.shape}"
        )
    if len(y) == 0:
        raise ValueError(f"{what}: no images to evaluate")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= probs.shape[1]:
        raise ValueError(f"labels must be class indices in [0, {probs.shape[1]}), got {y[:5]}...")
    if not np.isfinite(probs).all():
        raise ValueError(f"{what}: {int((~np.isfinite(probs)).any(1).sum())} rows are not finite")


def group_codes(y: np.ndarray, groups: Groups) -> np.ndarray:
    """One integer per image naming its group; a missing id (None, NaN, "") is a group of its own."""
    if groups is None:
        return np.arange(len(y))
    ids = pd.Series(np.asarray(groups, dtype=object))
    if len(ids) != len(y):
        raise ValueError(f"groups: {len(ids)} ids for {len(y)} images")
    ids = ids.where(ids.notna() & (ids.astype(str) != ""))
    labels = pd.Series(y).groupby(ids.to_numpy()).nunique()
    if (labels > 1).any():
        mixed = list(labels.index[labels > 1][:5])
        raise ValueError(f"groups {mixed} hold images of different classes; one lesion, one label")
    codes = pd.factorize(ids)[0]
    missing = codes < 0
    codes[missing] = codes.max(initial=-1) + 1 + np.arange(missing.sum())
    return codes


def _strata(y: np.ndarray, codes: np.ndarray) -> list[np.ndarray]:
    """The groups of each class (a group's class is its images' label)."""
    label = np.empty(int(codes.max()) + 1, dtype=np.int64)
    label[codes] = y
    return [np.flatnonzero(label == c) for c in np.unique(label)]


def _chunks(n_resamples: int, width: int) -> Iterator[int]:
    """Chunk sizes that keep [chunk, width] draws within CHUNK_CELLS."""
    step = max(1, CHUNK_CELLS // max(width, 1))
    for start in range(0, n_resamples, step):
        yield min(step, n_resamples - start)


def _draw_kinds(rng: np.random.Generator, kind: np.ndarray, n_kinds: int, b: int) -> np.ndarray:
    """How often each kind is drawn [b, n_kinds] when len(kind) groups are drawn with replacement."""
    n = len(kind)
    if n_kinds * 10 < n:  # few kinds: one multinomial draw per resample is exact and cheap
        return rng.multinomial(n, np.bincount(kind, minlength=n_kinds) / n, size=b)
    drawn = kind[rng.integers(0, n, (b, n))] + np.arange(b)[:, None] * n_kinds
    return np.bincount(drawn.ravel(), minlength=b * n_kinds).reshape(b, n_kinds)


def resample_sums(
    x: np.ndarray, y: np.ndarray, groups: Groups = None, n_resamples: int = 1000, seed: int = 0
) -> np.ndarray:
    """Sums of per-image features `x` [N, k] over the images of each resample: [n_resamples, k]."""
    codes = group_codes(y, groups)
    per_group = np.zeros((int(codes.max()) + 1, x.shape[1]))
    np.add.at(per_group, codes, x)
    rng = np.random.default_rng(seed)
    sums = np.zeros((n_resamples, x.shape[1]))
    for members in _strata(y, codes):
        kinds, kind = np.unique(per_group[members], axis=0, return_inverse=True)
        start = 0
        for b in _chunks(n_resamples, len(members)):
            sums[start : start + b] += _draw_kinds(rng, kind.ravel(), len(kinds), b) @ kinds
            start += b
    return sums


def resample_weights(
    y: np.ndarray, groups: Groups = None, n_resamples: int = 1000, seed: int = 0
) -> Iterator[np.ndarray]:
    """Chunks of image weights [b, N]: how often each image is drawn in each resample."""
    codes = group_codes(y, groups)
    strata, n_groups = _strata(y, codes), int(codes.max()) + 1
    rng = np.random.default_rng(seed)
    for b in _chunks(n_resamples, len(y)):
        drawn = np.concatenate([s[rng.integers(0, len(s), (b, len(s)))] for s in strata], axis=1)
        drawn += np.arange(b)[:, None] * n_groups
        counts = np.bincount(drawn.ravel(), minlength=b * n_groups).reshape(b, n_groups)
        yield counts[:, codes].astype(np.float64)


def percentile_interval(samples: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """The central `level` share of the resampled values, column by column."""
    tail = 50 * (1 - level)
    low, high = np.percentile(samples, [tail, 100 - tail], axis=0)
    return low, high


def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, nan where den is 0 (a class absent from the sample)."""
    return np.divide(num, den, out=np.full(np.broadcast(num, den).shape, np.nan), where=den > 0)


def hit_features(y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Per image [N, 2C]: a hit in its class's column, then a one in its class's column."""
    onehot = np.eye(n_classes)[y]
    return np.hstack([onehot * (pred == y)[:, None], onehot])


def recall_from_sums(sums: np.ndarray) -> np.ndarray:
    """Per-class recall [..., C] from hit_features sums [..., 2C]; nan for absent classes."""
    hits, images = np.split(sums, 2, axis=-1)
    return ratio(hits, images)


def balanced_from_recall(recall: np.ndarray) -> np.ndarray:
    """Mean recall over the classes present (ISIC 2019's metric)."""
    present = ~np.isnan(recall)
    return np.where(present, recall, 0).sum(-1) / present.sum(-1)


def weighted_auc(w: np.ndarray, positive: np.ndarray, score: np.ndarray) -> np.ndarray:
    """ROC AUC of `score` for `positive` under each row of weights; ties count a half, as sklearn."""
    order = np.argsort(score, kind="stable")
    s, p = score[order], positive[order]
    tied = s[1:] == s[:-1]
    starts = np.flatnonzero(np.r_[True, ~tied]) if tied.any() else None
    out = np.empty(len(w))
    rows = max(1, AUC_CELLS // len(score))
    for a in range(0, len(w), rows):  # a few rows at a time: the passes stay in cache
        wo = w[a : a + rows, order]
        pos = wo * p
        neg = wo - pos
        if starts is not None:  # equal scores: one block each
            pos, neg = np.add.reduceat(pos, starts, axis=1), np.add.reduceat(neg, starts, axis=1)
        below = np.cumsum(neg, axis=1)
        below -= 0.5 * neg  # negatives below, and half the tied ones
        out[a : a + rows] = np.einsum("bn,bn->b", pos, below) / (pos.sum(1) * neg.sum(1))
    return out


def macro_auc(w: np.ndarray, y: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """One-vs-rest AUC averaged over the classes present (needs two of them)."""
    return np.mean([weighted_auc(w, y == c, probs[:, c]) for c in np.unique(y)], axis=0)


def confidence_intervals(
    y: np.ndarray,
    probs: np.ndarray,
    groups: Groups = None,
    n_resamples: int = 1000,
    seed: int = 0,
    auc: bool = True,
) -> Intervals:
    """LEVEL intervals for accuracy, balanced accuracy, macro AUC and each present class's recall.

    Macro AUC (image weights, a rank statistic) costs most of the time: `auc=False` skips it."""
    check_predictions(y, probs)
    units = int(group_codes(y, groups).max()) + 1
    if n_resamples <= 0:
        return Intervals({}, {}, 0, units)
    present = np.unique(y)
    sums = resample_sums(
        hit_features(y, probs.argmax(1), probs.shape[1]), y, groups, n_resamples, seed
    )
    hits, images = np.split(sums, 2, axis=1)
    recall = ratio(hits, images)
    cols = {
        "accuracy": hits.sum(1) / images.sum(1),
        "balanced_accuracy": balanced_from_recall(recall),
    }
    if auc and len(present) > 1:
        weights = resample_weights(y, groups, n_resamples, seed)
        cols["macro_auc"] = np.concatenate([macro_auc(w, y, probs) for w in weights])
    low, high = percentile_interval(np.column_stack([*cols.values(), recall[:, present]]))
    pairs = [(float(lo), float(hi)) for lo, hi in zip(low, high, strict=True)]
    return Intervals(
        dict(zip(cols, pairs[: len(cols)], strict=True)),
        dict(zip(present.tolist(), pairs[len(cols) :], strict=True)),
        n_resamples,
        units,
    )


def flat_intervals(split: str, intervals: Intervals, classes: Sequence[str]) -> dict[str, float]:
    """`{split}_{metric}_ci_low/_ci_high` and `{split}_recall_{CLASS}_ci_low/_ci_high`."""
    named = {f"{split}_{m}": iv for m, iv in intervals.scalars.items()}
    named |= {f"{split}_recall_{classes[c]}": iv for c, iv in intervals.recall.items()}
    out = {}
    for name, (low, high) in named.items():
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = low, high
    return out


def paired_bootstrap(
    y: np.ndarray,
    champion: np.ndarray,
    challenger: np.ndarray,
    groups: Groups = None,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = LEVEL,
    normal: bool = False,
) -> PairedDifference:
    """Challenger minus champion balanced accuracy, both scored on the same resampled images,
    with its central `level` interval: percentiles, or with `normal` the difference ± z·(bootstrap
    SD), which holds at far tails (a Bonferroni-corrected 99.7 %) where 1,000 resamples leave
    three points to read a percentile from."""
    check_predictions(y, champion, "champion")
    check_predictions(y, challenger, "challenger")
    if champion.shape != challenger.shape:
        raise ValueError(f"champion {champion.shape} and challenger {challenger.shape} differ")
    n_classes = champion.shape[1]
    features = np.hstack([hit_features(y, p.argmax(1), n_classes) for p in (champion, challenger)])

    def scores(sums: np.ndarray) -> np.ndarray:  # [..., 2]: champion, challenger
        return np.stack(
            [balanced_from_recall(recall_from_sums(s)) for s in np.split(sums, 2, -1)], -1
        )

    a, b = scores(features.sum(0))
    units = int(group_codes(y, groups).max()) + 1
    low = high = float("nan")
    if n_resamples > 0:
        sums = resample_sums(features, y, groups, n_resamples, seed)
        if normal:
            from scipy.stats import norm  # ~1 s to import: only for a normal interval

            half = float(norm.ppf(0.5 + level / 2)) * _stratified_sd(sums, y, groups)
            low, high = float(b - a) - half, float(b - a) + half
        else:
            both = scores(sums)
            low, high = (float(v) for v in percentile_interval(both[:, 1] - both[:, 0], level))
    return PairedDifference(float(a), float(b), float(b - a), low, high, len(y), units, n_resamples)


def _stratified_sd(sums: np.ndarray, y: np.ndarray, groups: Groups) -> float:
    """SD of the balanced-accuracy difference from paired resample sums [B, 4C], each class's
    bootstrap variance scaled by m/(m - 1) for its m lesions: a resample of m lesions varies
    (m - 1)/m as much as a new sample does, which matters for a class of 5 lesions in a slice."""
    champion, challenger = (recall_from_sums(s) for s in np.split(sums, 2, -1))
    diff = challenger - champion  # [B, C], nan for classes absent here
    codes = group_codes(y, groups)
    lesions = pd.Series(codes).groupby(y).nunique().reindex(range(diff.shape[1])).to_numpy()
    present = ~np.isnan(diff[0])
    m = lesions[present]
    var = np.nanvar(diff[:, present], axis=0, ddof=1) * m / np.maximum(m - 1, 1)
    return float(np.sqrt(np.nansum(var)) / present.sum())
