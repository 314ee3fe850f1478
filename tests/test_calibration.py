"""Temperature scaling: recovers a known over-confidence and improves held-out NLL and ECE."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.metrics import log_loss

from skin.calibration import (
    apply_temperature,
    calibration_report,
    fit_temperature,
    nll,
    nll_and_gradient,
)


def calibrated(rng: np.random.Generator, n: int, classes: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose softmax is the true class distribution: labels are drawn from it."""
    logits = rng.normal(0, 1.5, (n, classes))
    p = softmax(logits, axis=1)
    y = (p.cumsum(1) > rng.random((n, 1))).argmax(1)
    return logits, y


def test_an_over_confident_model_is_recovered_and_improves_on_held_out_data() -> None:
    rng = np.random.default_rng(0)
    dev_logits, dev_y = calibrated(rng, 5000)
    test_logits, test_y = calibrated(rng, 5000)
    t = fit_temperature(3 * dev_logits, dev_y)  # logits scaled x3: over-confident
    assert t == pytest.approx(3, rel=0.1), f"fitted T {t:.2f}, want ~3"
    report = calibration_report(3 * test_logits, test_y, t)
    assert report["log_loss_after"] < report["log_loss_before"] - 0.1, report
    assert report["ece_after"] < report["ece_before"] / 2, report
    assert report["ece_after"] < 0.03, report


def test_a_calibrated_model_keeps_t_near_one() -> None:
    logits, y = calibrated(np.random.default_rng(1), 5000)
    assert fit_temperature(logits, y) == pytest.approx(1, abs=0.1)


def test_the_fit_is_the_minimum_and_its_gradient_is_exact() -> None:
    logits, y = calibrated(np.random.default_rng(2), 500)
    logits = 2 * logits
    t = fit_temperature(logits, y)
    for other in (0.8 * t, 1.25 * t):
        assert nll(logits, y, t) < nll(logits, y, other)
    x, eps = np.array([0.3]), 1e-6
    numeric = (
        nll_and_gradient(x + eps, logits, y)[0] - nll_and_gradient(x - eps, logits, y)[0]
    ) / (2 * eps)
    assert nll_and_gradient(x, logits, y)[1][0] == pytest.approx(numeric, rel=1e-5)


def test_apply_temperature_gives_probabilities_and_nll_is_log_loss() -> None:
    logits, y = calibrated(np.random.default_rng(3), 200)
    probs = apply_temperature(logits, 2.0)
    assert np.allclose(probs.sum(1), 1) and (probs.argmax(1) == logits.argmax(1)).all()
    assert nll(logits, y, 2.0) == pytest.approx(log_loss(y, probs, labels=range(5)))
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature(logits, 0.0)
    with pytest.raises(ValueError, match="dev logits"):
        fit_temperature(logits[:, 0], y)
