"""Class balancing of the train split: the notebook's NV undersampling, as a keep-flag."""

from __future__ import annotations

import hashlib

import pandas as pd


class BalanceError(ValueError):
    """Balancing cannot run as configured; the message names the class."""


def _stable_rank(keys: pd.Series, seed: int) -> pd.Series:
    """A seeded order that does not depend on row order, so the kept set is stable as data grows."""
    return keys.map(lambda k: hashlib.sha256(f"{seed}:{k}".encode()).hexdigest())


def undersample(
    manifest: pd.DataFrame,
    strategy: str = "undersample",
    majority_class: str | None = "NV",
    seed: int = 42,
) -> pd.DataFrame:
    """Set `keep`: with `undersample`, the majority class in train is cut at random (seeded) to
    the size of the next-largest train class; dev and test always keep their natural counts."""
    out = manifest.copy()
    out["keep"] = True
    if strategy == "none":
        return out
    if strategy != "undersample":
        raise BalanceError(f"unknown balance strategy {strategy!r}: use undersample or none")
    train = out[out["split"] == "train"]
    counts = train["label"].value_counts()
    if len(counts) < 2:
        return out
    majority = majority_class or str(counts.idxmax())
    if majority not in counts.index:
        raise BalanceError(
            f"majority class {majority!r} has no train images; set split.majority_class to one of"
            f" {sorted(counts.index)} or null for the largest"
        )
    target = int(counts.drop(majority).max())
    rows = train[train["label"] == majority]
    if len(rows) <= target:
        return out
    ranked = _stable_rank(rows["key"], seed).sort_values(kind="stable")
    out.loc[ranked.index[target:], "keep"] = False
    return out
