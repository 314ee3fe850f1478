"""Evaluation per slice of patients (body site, sex, age band, source), each number with an interval.

A clinician asks whether the model is safe where it matters: on the head and neck, for older
patients, on images from one clinic. Each slice gets n, balanced accuracy, melanoma sensitivity and
ECE with lesion-level bootstrap intervals; slices under `min_size` images are listed, not scored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from skin.stats.bootstrap import (
    Groups,
    balanced_from_recall,
    check_predictions,
    hit_features,
    percentile_interval,
    ratio,
    recall_from_sums,
    resample_sums,
)

DIMENSIONS = {"site": "anatom_site_general", "sex": "sex", "age": "age_approx", "source": "source"}
MIN_SIZE = 30
MISSING = "missing"
METRICS = ("balanced_accuracy", "mel_sensitivity", "ece")
ECE_BINS = 15  # as skin.stats.metrics.expected_calibration_error


def sanitise(value: object) -> str:
    """A metadata value as one MLflow-safe name segment: `head/neck` -> `head-neck`."""
    text = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(value).strip()).strip("-")
    return text if text.strip(".") else MISSING


def age_bands(ages: pd.Series, width: int = 20) -> pd.Series:
    """`0-19`, `20-39`, ... from approximate ages; empty or missing ages are `missing`."""
    blank = ages.isna() | (ages.astype(str).str.strip() == "")
    years = pd.to_numeric(ages.where(~blank), errors="coerce")
    bad = (years.isna() & ~blank) | (years < 0)
    if bad.any():
        raise ValueError(f"{ages.name}: not an age in years: {ages[bad].unique()[:5].tolist()}")
    low = (years // width * width).astype("Int64")
    return (low.astype(str) + "-" + (low + width - 1).astype(str)).where(~blank, MISSING)


def slice_values(meta: pd.DataFrame, dimensions: Mapping[str, str] = DIMENSIONS) -> pd.DataFrame:
    """One column per dimension present in `meta`: each image's slice name in it."""
    out = {}
    for dim, column in dimensions.items():
        if column not in meta.columns or meta[column].isna().all():
            continue
        values = meta[column].reset_index(drop=True)
        if dim == "age":
            out[dim] = age_bands(values)
        else:
            out[dim] = values.map(lambda v: MISSING if pd.isna(v) else sanitise(v))
    return pd.DataFrame(out, index=range(len(meta)))


def slice_features(
    y: np.ndarray, probs: np.ndarray, mel: int | None, mel_threshold: float | None
) -> np.ndarray:
    """Per image: hit_features, then melanoma called and melanoma, then ECE's per-bin gaps and a one."""
    pred, n_classes = probs.argmax(1), probs.shape[1]
    is_mel = np.zeros(len(y), bool) if mel is None else y == mel
    column = mel or 0  # without MEL nothing is a melanoma, so what is called does not count
    called = pred == column if mel_threshold is None else probs[:, column] >= mel_threshold
    conf = probs.max(1)
    edges = np.linspace(0, 1, ECE_BINS + 1)
    bins = np.searchsorted(edges, conf, side="left") - 1  # (lo, hi], as evaluate's ECE
    gap = np.zeros((len(y), ECE_BINS))
    inside = (bins >= 0) & (bins < ECE_BINS)
    gap[inside, bins[inside]] = (pred == y)[inside] - conf[inside]
    mel_cols = np.column_stack([is_mel & called, is_mel])
    return np.hstack([hit_features(y, pred, n_classes), mel_cols, gap, np.ones((len(y), 1))])


def metrics_from_sums(sums: np.ndarray, n_classes: int) -> np.ndarray:
    """[..., 3]: balanced accuracy, melanoma sensitivity, ECE from slice_features sums."""
    hits = sums[..., : 2 * n_classes]
    mel = sums[..., 2 * n_classes : 2 * n_classes + 2]
    gaps, n = sums[..., 2 * n_classes + 2 : -1], sums[..., -1]
    return np.stack(
        [
            balanced_from_recall(recall_from_sums(hits)),
            ratio(mel[..., 0], mel[..., 1]),
            np.abs(gaps).sum(-1) / n,
        ],
        -1,
    )


def slice_table(
    meta: pd.DataFrame,
    y: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    groups: Groups = None,
    min_size: int = MIN_SIZE,
    n_resamples: int = 1000,
    seed: int = 0,
    mel_threshold: float | None = None,
) -> pd.DataFrame:
    """One row per slice: dimension, value, n, n_mel, scored, and each metric with `_ci_low/_ci_high`.

    `meta` rows align with `y`/`probs`; `groups` (lesion ids) are resampled whole. Melanoma
    sensitivity is MEL's recall, or the share of MEL images at or above `mel_threshold` if given."""
    check_predictions(y, probs)
    if len(meta) != len(y):
        raise ValueError(f"slice metadata has {len(meta)} rows for {len(y)} predictions")
    mel = list(classes).index("MEL") if "MEL" in classes else None
    features = slice_features(y, probs, mel, mel_threshold)
    ids = None if groups is None else pd.Series(np.asarray(groups, dtype=object))
    rows = []
    for dim, values in slice_values(meta).items():
        for value in sorted(values.unique(), key=_order):
            members = np.flatnonzero(values.to_numpy() == value)
            row = {"dimension": dim, "value": value, "n": len(members)}
            row |= {"n_mel": int(features[members, 2 * len(classes) + 1].sum()), "scored": False}
            if len(members) >= min_size:
                row |= _scored(
                    features[members], y[members], ids, members, len(classes), n_resamples, seed
                )
            rows.append(row)
    columns = ["dimension", "value", "n", "n_mel", "scored"]
    columns += [f"{m}{s}" for m in METRICS for s in ("", "_ci_low", "_ci_high")]
    return pd.DataFrame(rows, columns=columns)


def _scored(
    features: np.ndarray,
    y: np.ndarray,
    ids: pd.Series | None,
    members: np.ndarray,
    n_classes: int,
    n_resamples: int,
    seed: int,
) -> dict[str, object]:
    """One slice's metrics and, when the bootstrap is on, their intervals."""
    out: dict[str, object] = {"scored": True}
    out |= dict(zip(METRICS, metrics_from_sums(features.sum(0), n_classes), strict=True))
    if n_resamples > 0:
        groups = None if ids is None else ids.iloc[members]
        sums = resample_sums(features, y, groups, n_resamples, seed)
        low, high = percentile_interval(metrics_from_sums(sums, n_classes))
        out |= {f"{m}_ci_low": lo for m, lo in zip(METRICS, low, strict=True)}
        out |= {f"{m}_ci_high": hi for m, hi in zip(METRICS, high, strict=True)}
    return out


def _order(value: str) -> tuple[bool, float, str]:
    """Age bands by age, other values alphabetically, `missing` last."""
    lead = value.split("-", 1)[0]
    return value == MISSING, float(lead) if lead.isdigit() else 0.0, value


def slice_metrics(table: pd.DataFrame, split: str = "test") -> dict[str, float]:
    """`test_slice/site/head-neck/balanced_accuracy` (+ `_ci_low/_ci_high`), and `.../n` for all."""
    out = {}
    for row in table.itertuples(index=False):
        prefix = f"{split}_slice/{row.dimension}/{row.value}"
        out[f"{prefix}/n"] = float(row.n)
        for name in (f"{m}{s}" for m in METRICS for s in ("", "_ci_low", "_ci_high")):
            value = getattr(row, name)
            if row.scored and pd.notna(value):
                out[f"{prefix}/{name}"] = float(value)
    return out
