"""An ensemble's UNK threshold and operating points, chosen on its own averaged dev probabilities,
keep on test the rates they promise (simulated members: correlated noisy logits around a truth)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.decision_rates.thresholds import (
    COVERAGE,
    COVERAGE_TOLERANCE,
    SPEC_TOLERANCE,
    Shape,
    trial,
)

TRIALS = 20  # per trial: abstention sd ~0.006, specificity sd ~0.01; the mean's MC error < 0.003


@pytest.mark.parametrize("rho", [0.3, 0.8], ids=["loosely-correlated", "tightly-correlated"])
def test_an_ensembles_test_abstention_and_specificity_keep_their_promises(rho: float) -> None:
    rng = np.random.default_rng(2121)
    outcomes = [trial(rng, Shape(rho=rho))["ensemble"] for _ in range(TRIALS)]
    abstain = np.array([o.abstain_rate for o in outcomes])
    off = np.abs(abstain - (1 - COVERAGE))
    assert (off <= COVERAGE_TOLERANCE).mean() >= 0.95, (
        f"test abstention {abstain.mean():.3f} (max off {off.max():.3f}), target {1 - COVERAGE}"
    )
    assert abs(abstain.mean() - (1 - COVERAGE)) <= 0.01, abstain.mean()
    for name in outcomes[0].specificity:
        target = int(name.rsplit("spec", 1)[1]) / 100
        spec = np.array([o.specificity[name] for o in outcomes])
        assert abs(spec.mean() - target) <= SPEC_TOLERANCE, f"{name}: test {spec.mean():.4f}"
        assert (np.abs(spec - target) <= 0.03).mean() >= 0.9, f"{name}: {np.sort(spec)}"
