"""Classification metrics from probabilities (scikit-learn), and the notebook's bias/variance."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass
class SplitMetrics:
    """Everything measured on one split."""

    scalars: dict[str, float]
    per_class: pd.DataFrame  # index class; precision, recall, f1, support, auc
    confusion: pd.DataFrame  # rows true, columns predicted


def expected_calibration_error(y: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    conf = probs.max(1)
    correct = probs.argmax(1) == y
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def split_metrics(y: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> SplitMetrics:
    """Accuracy, balanced accuracy (ISIC 2019's metric), per-class P/R/F1, confusion, OvR AUC."""
    # scikit-learn takes ~1 s to import: only when metrics are computed, not for a cached re-run
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        confusion_matrix,
        log_loss,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    labels = list(range(len(classes)))
    pred = probs.argmax(1)
    precision, recall, f1, support = precision_recall_fscore_support(
        y, pred, labels=labels, zero_division=0
    )
    present = [c for c in labels if (y == c).any()]
    auc = np.full(len(classes), np.nan)
    for c in present:
        if len(present) > 1:
            auc[c] = roc_auc_score(y == c, probs[:, c])
    per_class = pd.DataFrame(
        {"precision": precision, "recall": recall, "f1": f1, "support": support, "auc": auc},
        index=pd.Index(classes, name="class"),
    )
    scalars = {
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "macro_f1": float(f1[present].mean()) if present else 0.0,
        "macro_auc": float(np.nanmean(auc)) if len(present) > 1 else float("nan"),
        "log_loss": float(log_loss(y, np.clip(probs, 1e-12, 1), labels=labels)),
        "ece": expected_calibration_error(y, probs),
    }
    confusion = pd.DataFrame(
        confusion_matrix(y, pred, labels=labels),
        index=pd.Index(classes, name="true"),
        columns=pd.Index(classes, name="predicted"),
    )
    return SplitMetrics(scalars, per_class, confusion)


def bias_variance(
    train_accuracy: float, dev_accuracy: float, test_accuracy: float, human_level: float = 0.90
) -> dict[str, float]:
    """The notebook's reading: avoidable bias against human level, variance against train."""
    return {
        "bias": human_level - train_accuracy,
        "variance": train_accuracy - dev_accuracy,
        "variance_test": train_accuracy - test_accuracy,
    }


def diagnosis(bias: float, variance: float) -> str:
    """What to work on next, as the notebook read it."""
    if bias <= 0 and variance <= 0:
        return "at or above human level with no gap: collect harder data"
    if bias >= variance:
        return "reduce bias first (bigger model, train longer, unfreeze layers)"
    return "reduce variance first (more data, augmentation, regularisation)"


def flat_metrics(split: str, m: SplitMetrics) -> dict[str, float]:
    """`{split}_accuracy`, `{split}_balanced_accuracy`, …, and `{split}_recall_{CLASS}` etc."""
    out = {f"{split}_{k}": v for k, v in m.scalars.items() if not np.isnan(v)}
    for cls, row in m.per_class.iterrows():
        for metric in ("precision", "recall", "f1", "auc"):
            if not np.isnan(row[metric]):
                out[f"{split}_{metric}_{cls}"] = float(row[metric])
    return out
