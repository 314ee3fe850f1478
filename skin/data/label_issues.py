"""Suspect labels: images whose given label the cross-validated models disagree with, ranked by
cleanlab's label quality from out-of-fold probabilities (nothing is dropped here)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

SUSPECT_COLUMNS = ["key", "given_label", "suggested_label", "score", "issue"]


class LabelIssueError(ValueError):
    """Out-of-fold predictions that cannot be ranked; the message names the column or class."""


def rank_labels(oof: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """Every out-of-fold row, worst label first: its given and suggested label, cleanlab's label
    quality (self-confidence, 0-1: low is suspect) and whether cleanlab calls it an issue."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    columns = [f"prob_{c}" for c in classes]
    missing = [c for c in ["key", "label", *columns] if c not in oof]
    if missing:
        raise LabelIssueError(f"out-of-fold predictions lack columns {missing}")
    known = oof[oof["label"].isin(classes)].reset_index(drop=True)
    if known.empty:
        raise LabelIssueError(f"no out-of-fold row has a label in {list(classes)}")
    y = known["label"].map({c: i for i, c in enumerate(classes)}).to_numpy(dtype=np.int64)
    probs = known[columns].to_numpy(dtype=np.float64)
    probs = probs / probs.sum(axis=1, keepdims=True)
    issue = find_label_issues(y, probs, filter_by="prune_by_noise_rate")
    out = pd.DataFrame(
        {
            "key": known["key"],
            "given_label": known["label"],
            "suggested_label": np.asarray(classes, dtype=object)[probs.argmax(axis=1)],
            "score": get_label_quality_scores(y, probs, method="self_confidence"),
            "issue": issue,
        },
        columns=SUSPECT_COLUMNS,
    )
    return out.sort_values(["score", "key"], ignore_index=True)


def label_issues(ranked: pd.DataFrame) -> pd.DataFrame:
    """The rows cleanlab calls issues, worst first: what `audit/label_issues.csv` holds."""
    return ranked[ranked["issue"]].drop(columns="issue").reset_index(drop=True)
