"""One module per kind of decision; each offers `rows(ctx) -> list[Rate]`, simulated with the project's own functions.

`benchmarks/decisions.py` gathers every module here, so a new decision is one new file.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Rate:
    """One decision's promised rate beside the rate measured over `trials` simulated trials."""

    decision: str
    promised: str
    measured: float
    low: float
    high: float
    trials: int
    holds: bool
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def wilson(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion: the Monte-Carlo error of a measured rate."""
    if trials == 0:
        return float("nan"), float("nan")
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = (
        z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    )
    return max(0.0, centre - half), min(1.0, centre + half)


def at_most(decision: str, limit: float, hits: int, trials: int, note: str = "") -> Rate:
    """A rate promised to stay at or below `limit` (false alarms, false promotions): holds unless
    the whole Monte-Carlo interval lies above it."""
    hits, trials = int(hits), int(trials)
    low, high = wilson(hits, trials)
    return Rate(decision, f"<= {limit:g}", hits / trials, low, high, trials, low <= limit, note)


def at_least(decision: str, limit: float, hits: int, trials: int, note: str = "") -> Rate:
    """A rate promised to reach at least `limit` (power, coverage): holds unless the whole
    Monte-Carlo interval lies below it."""
    hits, trials = int(hits), int(trials)
    low, high = wilson(hits, trials)
    return Rate(decision, f">= {limit:g}", hits / trials, low, high, trials, high >= limit, note)


def near(
    decision: str, target: float, tolerance: float, values: list[float], note: str = ""
) -> Rate:
    """A rate promised to sit at `target` ± `tolerance` (a coverage, an abstention rate): the
    mean over trials with a normal interval of that mean."""
    values = [float(v) for v in values]
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / max(n - 1, 1))
    half = 1.96 * sd / math.sqrt(n)
    holds = bool(abs(mean - target) <= tolerance)
    return Rate(
        decision, f"{target:g} ± {tolerance:g}", mean, mean - half, mean + half, n, holds, note
    )
