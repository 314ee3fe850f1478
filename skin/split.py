"""Stratified, leakage-safe, growth-stable train/dev/test assignment (pure: tables in, labels out)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from skin.manifest import SPLITS


class SplitError(ValueError):
    """The data cannot be split as asked; the message names the class or the setting."""


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != len(SPLITS):
        raise SplitError(f"need {len(SPLITS)} fractions (train, dev, test), got {list(fractions)}")
    if any(f < 0 for f in fractions) or fractions[0] <= 0:
        raise SplitError(f"fractions must be non-negative with train > 0, got {list(fractions)}")
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise SplitError(
            f"fractions must sum to 1, got {list(fractions)} (sum {sum(fractions):.4f})"
        )
    return (float(fractions[0]), float(fractions[1]), float(fractions[2]))


def _groups(df: pd.DataFrame, group_by_lesion: bool) -> np.ndarray:
    """Connected components of 'same file' and 'same lesion': these must share a split."""
    parent = list(range(len(df)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    columns = ["fingerprint"] + (["lesion_id"] if group_by_lesion and "lesion_id" in df else [])
    for column in columns:
        values = df[column].to_numpy()
        first: dict[object, int] = {}
        for i, value in enumerate(values):
            if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
                continue
            if value in first:
                ra, rb = find(first[value]), find(i)
                if ra != rb:
                    parent[rb] = ra
            else:
                first[value] = i
    return np.array([find(i) for i in range(len(df))])


def _targets(n: int, fractions: tuple[float, float, float]) -> np.ndarray:
    """Per-split sizes for one class: dev/test rounded half up (≥ 1 when asked for), rest train."""
    out = np.zeros(len(SPLITS), dtype=int)
    for s in range(1, len(SPLITS)):
        if fractions[s] > 0:
            out[s] = max(1, math.floor(n * fractions[s] + 0.5))
    out[0] = n - out[1:].sum()
    return out


def assign_splits(
    df: pd.DataFrame,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 42,
    previous: pd.DataFrame | None = None,
    group_by_lesion: bool = True,
) -> pd.Series:
    """Return a split name per row of `df` (columns key, label, fingerprint[, lesion_id]).

    Rows whose key is in `previous` keep their split; rows tied to them by lesion or by identical
    content follow them; the other groups fill each class's remaining deficits, largest first.
    """
    fr = check_fractions(fractions)
    if df.empty:
        raise SplitError("the dataset is empty: nothing to split")
    original_index = df.index
    df = df.sort_values("key", kind="stable")  # row order must not change the outcome
    sorted_index = df.index
    df = df.reset_index(drop=True)
    labels = sorted(df["label"].unique())
    label_idx = df["label"].map({c: i for i, c in enumerate(labels)}).to_numpy()
    group = _groups(df, group_by_lesion)
    n_splits = len(SPLITS)

    assigned = np.full(len(df), -1)
    if previous is not None and len(previous):
        prev_map = dict(zip(previous["key"], previous["split"].map(SPLITS.index), strict=True))
        assigned = df["key"].map(prev_map).fillna(-1).astype(int).to_numpy().copy()
        # Followers: any unassigned row whose group already has a split takes the group's.
        fixed = pd.Series(assigned[assigned >= 0], index=group[assigned >= 0])
        if len(fixed):
            group_split = fixed.groupby(level=0).agg(lambda s: s.value_counts().idxmax())
            follow = (assigned < 0) & np.isin(group, group_split.index)
            assigned[follow] = group_split.reindex(group[follow]).to_numpy()

    n_classes = len(labels)
    totals = np.bincount(label_idx, minlength=n_classes)
    needed = sum(1 for f in fr if f > 0)
    groups_per_class = pd.Series(group).groupby(label_idx).nunique()
    for c, name in enumerate(labels):
        if groups_per_class.get(c, 0) < needed:
            raise SplitError(
                f"class {name} is too small to split: {totals[c]} images in"
                f" {groups_per_class.get(c, 0)} independent groups, need at least {needed}"
                " (one per split with a non-zero fraction)"
            )
    target = np.stack([_targets(int(n), fr) for n in totals], axis=1)  # [split, class]
    count = np.zeros((n_splits, n_classes), dtype=int)
    np.add.at(count, (assigned[assigned >= 0], label_idx[assigned >= 0]), 1)

    free = assigned < 0
    if not free.any():
        return _result(assigned, sorted_index, original_index)
    table = pd.crosstab(group[free], label_idx[free]).reindex(
        columns=range(n_classes), fill_value=0
    )
    group_ids, vectors = table.index.to_numpy(), table.to_numpy()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(group_ids))
    order = order[np.argsort(-vectors.sum(axis=1)[order], kind="stable")]
    chosen: dict[object, int] = {}
    for i in order:
        v = vectors[i]
        deficit = np.clip(target - count, 0, None)  # [split, class]
        fit = np.minimum(v, deficit).sum(axis=1)
        over = (v - np.minimum(v, deficit)).sum(axis=1)
        mask = v > 0
        rel = deficit[:, mask].sum(axis=1) / np.maximum(target[:, mask].sum(axis=1), 1)
        score = (fit - over) * 1e6 + rel
        s = int(np.argmax(score))
        chosen[group_ids[i]] = s
        count[s] += v
    assigned[free] = pd.Series(group[free]).map(chosen).to_numpy()
    return _result(assigned, sorted_index, original_index)


def _result(assigned: np.ndarray, sorted_index: pd.Index, original_index: pd.Index) -> pd.Series:
    names = pd.Series(np.array(SPLITS, dtype=object)[assigned], index=sorted_index, name="split")
    return names.reindex(original_index)


def split_report(df: pd.DataFrame, fractions: Sequence[float]) -> pd.DataFrame:
    """Per class: actual sizes next to the targets, for tests and the CLI."""
    fr = check_fractions(fractions)
    counts = (
        df.groupby(["label", "split"])
        .size()
        .unstack(fill_value=0)
        .reindex(columns=list(SPLITS), fill_value=0)
    )
    for s, name in enumerate(SPLITS):
        counts[f"{name}_target"] = [
            _targets(int(n), fr)[s] for n in counts[list(SPLITS)].sum(axis=1)
        ]
    return counts
