"""Cross-validation folds over train: stratified by class, grouped by lesion and duplicate (pure).

Dev and test are held out untouched. A fold's manifest is the same table with train = the other
folds, dev = this fold, test = test, and train balanced again by the main pipeline's rule; the
manifest's dev is in no fold manifest, so no fold model trains on it: it is left for what the
fold models become (the fold ensemble's temperature, UNK threshold, operating points and gate).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from skin.data.balance import undersample
from skin.data.split import _groups
from skin.stats.metrics import split_metrics

log = logging.getLogger(__name__)

POOL = ("train",)  # the rows folds are made of; dev (the fold ensemble's) and test stay out


class FoldError(ValueError):
    """Folds cannot be made as asked; the message names the setting or the class."""


def assign_folds(
    manifest: pd.DataFrame, k: int, seed: int = 42, group_by_lesion: bool = True
) -> pd.Series:
    """The fold (0..k-1) of every train row, -1 for dev and test; a lesion or a file's duplicates
    share a fold, and each fold takes close to 1/k of every class. Row order does not matter."""
    if k < 2:
        raise FoldError(f"cross-validation needs at least 2 folds, got {k}")
    pool = manifest[manifest["split"].isin(POOL)].sort_values("key", kind="stable")
    group = _groups(pool.reset_index(drop=True), group_by_lesion)
    if len(np.unique(group)) < k:
        raise FoldError(
            f"{len(np.unique(group))} independent groups (lesions, duplicates) in train"
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
                "class %s has %d independent groups in train, fewer than %d folds: some"
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
    """The manifest of fold `fold`: train = the other folds, dev = this fold, test untouched, the
    manifest's dev left out (no fold model may train on it); train undersampled by the main
    pipeline's rule (skin.data.balance), dev and test kept whole."""
    if fold not in set(folds[folds >= 0]):
        raise FoldError(f"fold {fold} does not exist: folds are {sorted(set(folds[folds >= 0]))}")
    pooled_or_test = (folds.reindex(manifest.index) >= 0) | manifest["split"].eq("test")
    out = manifest[pooled_or_test.to_numpy()].copy()
    pooled = folds.reindex(out.index).to_numpy() >= 0
    out.loc[pooled, "split"] = np.where(folds.reindex(out.index)[pooled] == fold, "dev", "train")
    return undersample(out, balance, majority_class, seed)


# --------------------------------------------------------------------------- scores

FOLD_METRICS = ("balanced_accuracy", "accuracy", "macro_auc")


@dataclass
class CVOutcome:
    """A cross-validation: its parent run, one row per fold, the cross-validated metrics and
    where the per-fold table and the out-of-fold predictions were written."""

    parent_run_id: str
    folds: list[dict[str, Any]]  # fold, run_id, manifest_uri, manifest_hash, dev_/test_ metrics
    metrics: dict[str, float]  # cv_<metric>_mean/_std over folds, cv_oof_<metric> pooled
    oof_uri: str
    table_uri: str
    manifest_uri: str
    manifest_hash: str

    @property
    def score(self) -> float:
        """The pooled out-of-fold balanced accuracy: what a sweep ranks a config by."""
        return self.metrics["cv_oof_balanced_accuracy"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def out_of_fold(
    frames: Sequence[pd.DataFrame], run_ids: Sequence[str], manifest: pd.DataFrame
) -> pd.DataFrame:
    """Every fold's predictions on its own validation part, stacked: each train row once,
    with its fold, the run that scored it and its split in the manifest the folds came from."""
    split_of = manifest.set_index("key")["split"]
    parts = [
        f.assign(fold=i, run_id=r) for i, (f, r) in enumerate(zip(frames, run_ids, strict=True))
    ]
    oof = pd.concat(parts, ignore_index=True)
    if oof["key"].duplicated().any():
        raise FoldError(f"{oof['key'].duplicated().sum()} rows scored by two folds: folds overlap")
    return oof.assign(manifest_split=oof["key"].map(split_of).to_numpy())


def cv_metrics(table: pd.DataFrame, oof: pd.DataFrame, classes: Sequence[str]) -> dict[str, float]:
    """Mean and standard deviation (ddof 1) of each fold's dev metrics, and the same metrics on
    the pooled out-of-fold predictions (every train image scored by the model that never
    trained on it)."""
    out: dict[str, float] = {}
    for name in FOLD_METRICS:
        values = table.get(f"dev_{name}", pd.Series(dtype=float)).astype(float)
        out[f"cv_{name}_mean"] = float(values.mean())
        out[f"cv_{name}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    y = oof["label"].map({c: i for i, c in enumerate(classes)}).to_numpy(dtype=np.int64)
    probs = oof[[f"prob_{c}" for c in classes]].to_numpy(dtype=np.float64)
    probs = probs / probs.sum(axis=1, keepdims=True)  # float32 on disk: sums off by ~1e-7
    pooled = split_metrics(y, probs, classes).scalars
    out |= {f"cv_oof_{name}": float(pooled[name]) for name in FOLD_METRICS}
    return {k: v for k, v in out.items() if np.isfinite(v)} | {
        "cv_folds": float(len(table)),
        "cv_oof_images": float(len(oof)),
    }
