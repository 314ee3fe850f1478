"""Unusable images: tiny, near-constant, almost black or white, or heavily blurred, each flagged
with the measure that flagged it (decoding failures stay with the decode stage's report)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

MEASURES = ["width", "height", "brightness", "contrast", "sharpness"]


@dataclass(frozen=True)
class QualityLimits:
    """Where an image stops being usable; blur is judged against this dataset's own median."""

    min_side: int = 64
    dark: float = 12.0  # mean grey level (0-255) at or below: almost black
    bright: float = 245.0  # at or above: almost white
    flat: float = 4.0  # grey-level standard deviation at or below: near-constant
    blur_ratio: float = 0.02  # Laplacian variance under this share of the dataset median


def measure(square: np.ndarray, width: int, height: int) -> dict[str, float]:
    """One image's measures on its decoded square (a fixed size, so images compare)."""
    from scipy.ndimage import laplace  # scipy only when auditing: off a cached run's path

    grey = square.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return {
        "width": float(width),
        "height": float(height),
        "brightness": float(grey.mean()),
        "contrast": float(grey.std()),
        "sharpness": float(laplace(grey).var()),
    }


def flag(measures: pd.DataFrame, limits: QualityLimits) -> pd.DataFrame:
    """The rows that are unusable: key, reason (which measure), value and the limit it crossed."""
    m = measures
    typical = float(m["sharpness"].median()) if len(m) else 0.0
    checks = [
        (
            "tiny",
            np.minimum(m["width"], m["height"]),
            lambda v: v < limits.min_side,
            limits.min_side,
        ),
        ("almost black", m["brightness"], lambda v: v <= limits.dark, limits.dark),
        ("almost white", m["brightness"], lambda v: v >= limits.bright, limits.bright),
        ("near-constant", m["contrast"], lambda v: v <= limits.flat, limits.flat),
        (
            "heavily blurred",
            m["sharpness"],
            lambda v: v < limits.blur_ratio * typical,
            limits.blur_ratio * typical,
        ),
    ]
    rows = [
        {"key": key, "reason": reason, "value": float(v), "limit": float(limit)}
        for reason, values, bad, limit in checks
        for key, v in zip(m["key"], values, strict=True)
        if bad(v)
    ]
    return pd.DataFrame(rows, columns=["key", "reason", "value", "limit"])
