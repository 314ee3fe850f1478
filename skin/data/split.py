"""Stratified, leakage-safe, growth-stable train/dev/test assignment (pure: tables in, labels out)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from skin.base.config import FractionsError, check_fractions
from skin.data.manifest import CLUSTER, SPLITS

log = logging.getLogger(__name__)


class SplitError(ValueError):
    """The data cannot be split as asked; the message names the class or the setting."""


@dataclass(frozen=True)
class SplitResult:
    """A split per row, the earlier rows that had to move, and the (class, split) cells left empty."""

    split: pd.Series
    moves: pd.DataFrame  # columns key, from, to: rows of `previous` whose split changed
    gaps: list[tuple[str, str]]  # a class with enough groups but no image in a split

    def describe_moves(self) -> str:
        """One line for the log: how many earlier images moved, between which splits, and why."""
        pairs = self.moves.value_counts(["from", "to"]).sort_index()
        return (
            f"{len(self.moves)} images of the previous manifest changed split"
            f" ({', '.join(f'{a}->{b}: {n}' for (a, b), n in pairs.items())}): new links (same"
            " lesion, identical file or near-duplicate) joined images it had in different splits; each joined"
            " group took the split of its largest earlier part"
            f" (e.g. {', '.join(self.moves['key'].head(3))})"
        )


def _fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """The config's rule for fractions (`check_fractions`), failing as the split fails."""
    try:
        return check_fractions(fractions)
    except FractionsError as exc:
        raise SplitError(str(exc)) from exc


def _groups(df: pd.DataFrame, group_by_lesion: bool) -> np.ndarray:
    """Connected components of 'same file', 'same lesion' and 'near-duplicates' (the audit's
    `duplicate_cluster`, when the listing carries it): these must share a split."""
    parent = list(range(len(df)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    columns = ["fingerprint"] + (["lesion_id"] if group_by_lesion and "lesion_id" in df else [])
    columns += [CLUSTER] if CLUSTER in df else []
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


def split_with_moves(
    df: pd.DataFrame,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 42,
    previous: pd.DataFrame | None = None,
    group_by_lesion: bool = True,
) -> SplitResult:
    """Split `df` (columns key, label, fingerprint[, lesion_id, duplicate_cluster]); report the
    rows that moved.

    Groups of rows tied by lesion, identical content or a near-duplicate cluster share a split. A group with rows in
    `previous` keeps their split; if new links joined rows of several splits, the group takes the
    split of its largest earlier part (ties: the split its classes fill least) and the rest move.
    The other groups first give every class one group in each split it lacks (smallest first),
    then fill each class's remaining deficits, largest first.
    """
    fr = _fractions(fractions)
    if df.empty:
        raise SplitError("the dataset is empty: nothing to split")
    original_index = df.index
    df = df.sort_values("key", kind="stable")  # row order must not change the outcome
    sorted_index = df.index
    df = df.reset_index(drop=True)
    labels = sorted(df["label"].unique())
    label_idx = df["label"].map({c: i for i, c in enumerate(labels)}).to_numpy()
    group = _groups(df, group_by_lesion)
    _check_sizes(group, label_idx, labels, fr)
    target = np.stack([_targets(int(n), fr) for n in np.bincount(label_idx)], axis=1)
    before, assigned = _pin(df["key"], group, label_idx, target, previous)
    count = np.zeros_like(target)  # [split, class]
    np.add.at(count, (assigned[assigned >= 0], label_idx[assigned >= 0]), 1)
    free = assigned < 0
    if free.any():
        table = pd.crosstab(group[free], label_idx[free]).reindex(
            columns=range(len(labels)), fill_value=0
        )
        group_ids, vectors = table.index.to_numpy(), table.to_numpy()
        order = np.random.default_rng(seed).permutation(len(group_ids))
        choice = np.full(len(group_ids), -1)
        _reserve(vectors, order, fr, count, choice)
        _fill(vectors, order, target, count, choice)
        assigned[free] = choice[np.searchsorted(group_ids, group[free])]
    moved = (before >= 0) & (before != assigned)
    names = np.array(SPLITS, dtype=object)
    moves = pd.DataFrame(
        {"key": df["key"][moved], "from": names[before[moved]], "to": names[assigned[moved]]}
    ).reset_index(drop=True)
    return SplitResult(
        _result(assigned, sorted_index, original_index), moves, _gaps(count, labels, fr)
    )


def _check_sizes(
    group: np.ndarray, label_idx: np.ndarray, labels: list[str], fr: tuple[float, ...]
) -> None:
    """Each class needs one independent group per split with a non-zero fraction."""
    needed = sum(1 for f in fr if f > 0)
    groups_per_class = pd.Series(group).groupby(label_idx).nunique()
    for c, name in enumerate(labels):
        if groups_per_class.get(c, 0) < needed:
            raise SplitError(
                f"class {name} is too small to split: {int((label_idx == c).sum())} images in"
                f" {groups_per_class.get(c, 0)} independent groups, need at least {needed}"
                " (one per split with a non-zero fraction)"
            )


def _pin(
    keys: pd.Series,
    group: np.ndarray,
    label_idx: np.ndarray,
    target: np.ndarray,
    previous: pd.DataFrame | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's earlier split and its pinned split (-1: free): a group follows its largest part.

    Parts of equal size move as many images whichever wins: the split the group's classes fill
    least (against their targets) wins, so a tie does not empty a class's only dev or test cell.
    """
    before = np.full(len(keys), -1)
    if previous is not None and len(previous):
        prev_map = dict(zip(previous["key"], previous["split"].map(SPLITS.index), strict=True))
        before = keys.map(prev_map).fillna(-1).astype(int).to_numpy()
    known = before >= 0
    pinned = np.full(len(keys), -1)
    if not known.any():
        return before, pinned
    votes = pd.crosstab(group[known], before[known]).reindex(
        columns=range(len(SPLITS)), fill_value=0
    )
    largest = votes.to_numpy() == votes.to_numpy().max(axis=1, keepdims=True)  # [group, split]
    group_split = pd.Series(largest.argmax(axis=1), index=votes.index)  # the earliest largest
    tied = largest.sum(axis=1) > 1
    in_pinned = np.isin(group, votes.index)
    pinned[in_pinned] = group_split.reindex(group[in_pinned]).to_numpy()
    if tied.any():
        count = np.zeros_like(target)  # [split, class], of the groups without a tie
        settled = in_pinned & ~np.isin(group, votes.index[tied])
        np.add.at(count, (pinned[settled], label_idx[settled]), 1)
        for g, options in zip(votes.index[tied], largest[tied], strict=True):
            rows = group == g
            v = np.bincount(label_idx[rows], minlength=target.shape[1])
            fill = count[:, v > 0].sum(axis=1) / np.maximum(target[:, v > 0].sum(axis=1), 1)
            s = int(np.argmin(np.where(options, fill, np.inf)))  # then the earliest split
            pinned[rows] = s
            count[s] += v
    return before, pinned


def _reserve(
    vectors: np.ndarray,
    order: np.ndarray,
    fr: tuple[float, ...],
    count: np.ndarray,
    choice: np.ndarray,
) -> None:
    """Give each class one free group in every split it lacks: the purest, smallest group first.

    Classes with the fewest free groups choose first, and the splits with the smallest fraction.
    """
    rank = np.empty(len(order), dtype=int)
    rank[order] = np.arange(len(order))  # the seeded shuffle breaks ties
    preference = np.lexsort((rank, vectors.sum(axis=1), (vectors > 0).sum(axis=1)))
    splits = [s for s in np.argsort(fr, kind="stable") if fr[s] > 0]
    for c in np.argsort((vectors > 0).sum(axis=0), kind="stable"):
        for s in splits:
            if count[s, c] > 0:
                continue
            candidates = preference[(vectors[preference, c] > 0) & (choice[preference] < 0)]
            if len(candidates):
                choice[candidates[0]] = s
                count[s] += vectors[candidates[0]]


def _fill(
    vectors: np.ndarray,
    order: np.ndarray,
    target: np.ndarray,
    count: np.ndarray,
    choice: np.ndarray,
) -> None:
    """The remaining free groups, largest first, each to the split whose deficits it fits best."""
    order = order[np.argsort(-vectors.sum(axis=1)[order], kind="stable")]
    for i in order[choice[order] < 0]:
        v = vectors[i]
        deficit = np.clip(target - count, 0, None)  # [split, class]
        fit = np.minimum(v, deficit).sum(axis=1)
        over = (v - np.minimum(v, deficit)).sum(axis=1)
        mask = v > 0
        rel = deficit[:, mask].sum(axis=1) / np.maximum(target[:, mask].sum(axis=1), 1)
        s = int(np.argmax((fit - over) * 1e6 + rel))
        choice[i] = s
        count[s] += v


def _gaps(count: np.ndarray, labels: list[str], fr: tuple[float, ...]) -> list[tuple[str, str]]:
    """(class, split) cells left empty, each logged loudly: scores on that split miss the class."""
    gaps = [
        (name, SPLITS[s])
        for c, name in enumerate(labels)
        for s in range(len(SPLITS))
        if fr[s] > 0 and count[s, c] == 0
    ]
    for name, split in gaps:
        log.warning(
            "class %(c)s has no %(s)s images although it has enough independent groups: the"
            " previous manifest pins them to other splits (or other classes took them), so %(s)s"
            " scores leave %(c)s out; add images of %(c)s, or split afresh (no previous manifest)",
            {"c": name, "s": split},
        )
    return gaps


def _result(assigned: np.ndarray, sorted_index: pd.Index, original_index: pd.Index) -> pd.Series:
    names = pd.Series(np.array(SPLITS, dtype=object)[assigned], index=sorted_index, name="split")
    return names.reindex(original_index)


def split_report(df: pd.DataFrame, fractions: Sequence[float]) -> pd.DataFrame:
    """Per class: actual sizes next to the targets (how close a split came to its fractions)."""
    fr = _fractions(fractions)
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
