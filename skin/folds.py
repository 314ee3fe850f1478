"""Cross-validation folds over train+dev: stratified by class, grouped by lesion and duplicate (pure).

The test split is held out untouched. A fold's manifest is the same table with train = the other
folds, dev = this fold, test = test, and train balanced again by the main pipeline's rule.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from skin.balance import undersample
from skin.split import _groups

log = logging.getLogger(__name__)

POOL = ("train", "dev")  # the rows folds are made of; test stays out


class FoldError(ValueError):
    """Folds cannot be made as asked; the message names the setting or the class."""


def assign_folds(
    manifest: pd.DataFrame, k: int, seed: int = 42, group_by_lesion: bool = True
) -> pd.Series:
    """The fold (0..k-1) of every train+dev row, -1 for test; a lesion or a file's duplicates
    share a fold, and each fold takes close to 1/k of every class. Row order does not matter."""
    if k < 2:
        raise FoldError(f"cross-validation needs at least 2 folds, got {k}")
    pool = manifest[manifest["split"].isin(POOL)].sort_values("key", kind="stable")
    group = _groups(pool.reset_index(drop=True), group_by_lesion)
    if len(np.unique(group)) < k:
        raise FoldError(
            f"{len(np.unique(group))} independent groups (lesions, duplicates) in train+dev"
            f" cannot fill {k} folds: use fewer folds"
        )
    labels = pool["label"].to_numpy()
    table = pd.crosstab(group, labels)  # [group, class] image counts
    _warn_small_classes(table, k)
    choice = _deal(table.to_numpy(), k, seed)
    fold_of_group = pd.Series(choice, index=table.index)
    out = pd.Series(-1, index=manifest.index, name="fold", dtype=int)
    out.loc[pool.index] = fold_of_group.reindex(group).to_numpy()
    return out


def _deal(vectors: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Groups, largest first (seeded ties), each to the fold whose class deficits it fits best."""
    target = vectors.sum(axis=0) / k  # per class, per fold
    count = np.zeros((k, vectors.shape[1]))
    order = np.random.default_rng(seed).permutation(len(vectors))
    order = order[np.argsort(-vectors.sum(axis=1)[order], kind="stable")]
    choice = np.full(len(vectors), -1)
    for i in order:
        v = vectors[i]
        deficit = np.clip(target - count, 0, None)
        fit = np.minimum(v, deficit).sum(axis=1) - np.clip(v - deficit, 0, None).sum(axis=1)
        f = int(np.lexsort((count.sum(axis=1), -fit))[0])  # best fit, then the smallest fold
        choice[i] = f
        count[f] += v
    return choice


def _warn_small_classes(table: pd.DataFrame, k: int) -> None:
    for name, groups in (table > 0).sum(axis=0).items():
        if groups < k:
            log.warning(
                "class %s has %d independent groups in train+dev, fewer than %d folds: some"
                " folds validate without it",
                name,
                groups,
                k,
            )


def fold_manifest(
    manifest: pd.DataFrame,
    folds: pd.Series,
    fold: int,
    *,
    balance: str = "undersample",
    majority_class: str | None = "NV",
    seed: int = 42,
) -> pd.DataFrame:
    """The manifest of fold `fold`: train = the other folds, dev = this fold, test untouched;
    train undersampled by the main pipeline's rule (skin.balance), dev and test kept whole."""
    if fold not in set(folds[folds >= 0]):
        raise FoldError(f"fold {fold} does not exist: folds are {sorted(set(folds[folds >= 0]))}")
    out = manifest.copy()
    pooled = folds.reindex(out.index).to_numpy() >= 0
    out.loc[pooled, "split"] = np.where(folds.reindex(out.index)[pooled] == fold, "dev", "train")
    return undersample(out, balance, majority_class, seed)
