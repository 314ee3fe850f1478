"""Temperature scaling: recovers a known over-confidence, improves held-out NLL and ECE; a failed
fit (at a bound, or raising dev log loss) is rejected and T = 1 served."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.special import softmax
from sklearn.metrics import log_loss

from skin.base.config import load_config
from skin.base.labels import CLASSES
from skin.evaluate.report import Scored
from skin.evaluate.stage import evaluation_findings
from skin.stats.abstain import coverage_threshold, ood_scores
from skin.stats.calibration import (
    LOG_T_BOUNDS,
    apply_temperature,
    calibrate,
    calibration_report,
    fit_temperature,
    judge_temperature,
    nll,
    nll_and_gradient,
)
from skin.stats.operating import threshold_at_specificity


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


# --------------------------------------------------------------------------- a fit is judged


def uninformative(
    rng: np.random.Generator, n: int, classes: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """Logits that point away from the true class (a tiny run's dev): NLL falls as T grows."""
    y = rng.integers(0, classes, n)
    logits = rng.normal(0, 0.5, (n, classes)) - 2.0 * np.eye(classes)[y]
    return logits, y


def test_a_fit_driven_to_the_bound_is_rejected_and_t_one_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logits, y = uninformative(np.random.default_rng(4), 400)
    assert fit_temperature(logits, y) == pytest.approx(np.exp(LOG_T_BOUNDS[1]), rel=1e-3)
    with caplog.at_level("WARNING", logger="skin.stats.calibration"):
        fit = calibrate(logits, y)
    assert not fit.accepted and fit.temperature == 1.0, fit
    assert fit.fitted == pytest.approx(np.exp(LOG_T_BOUNDS[1]), rel=1e-3), fit
    assert "bound" in fit.reason and "rejected" in caplog.text, (fit.reason, caplog.text)
    doc = fit.to_json()
    assert doc["temperature"] == 1.0 and doc["accepted"] is False and doc["reason"], doc


def test_a_fit_that_raises_dev_log_loss_is_rejected(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    logits, y = calibrated(np.random.default_rng(5), 2000)
    monkeypatch.setattr(
        "skin.stats.calibration.fit_temperature", lambda z, labels: 4.0
    )  # a bad fit
    with caplog.at_level("WARNING", logger="skin.stats.calibration"):
        fit = calibrate(logits, y)
    assert nll(logits, y, 4.0) > nll(logits, y), "the simulated fit is worse than T = 1"
    assert not fit.accepted and fit.temperature == 1.0 and fit.fitted == 4.0, fit
    assert "log loss" in fit.reason and "rejected" in caplog.text, fit.reason
    assert judge_temperature(logits, y, 4.0) == fit, "the rule itself, without the fit"


def test_a_normal_fit_is_accepted_and_served() -> None:
    logits, y = calibrated(np.random.default_rng(6), 2000)
    fit = calibrate(3 * logits, y)  # over-confident: T near 3 lowers dev log loss
    assert fit.accepted and fit.temperature == fit.fitted == pytest.approx(3, rel=0.15), fit
    assert fit.dev_log_loss_fitted < fit.dev_log_loss_raw, fit
    assert fit.to_json()["accepted"] is True, fit.to_json()


def test_a_rejected_fit_is_recorded_and_every_threshold_uses_the_t_served() -> None:
    """Evaluation on dev/test logits whose fit hits the bound: T = 1 served, said in
    calibration.json, and the UNK threshold and operating points chosen on softmax(logits)."""

    cfg = load_config(None, {"evaluate.bootstrap": 0})
    rng = np.random.default_rng(7)
    logits, labels, rows = {}, {}, {}
    for split in ("dev", "test"):
        logits[split], labels[split] = uninformative(rng, 400)
        rows[split] = pd.DataFrame(
            {
                "key": [f"{split}/{i}.jpg" for i in range(400)],
                "source": "mem://",
                "label": np.array(CLASSES)[labels[split]],
                "lesion_id": [f"{split}-{i}" for i in range(400)],
            }
        )
    probs = {s: (softmax(z, axis=1), labels[s]) for s, z in logits.items()}
    scored = Scored(tuple(CLASSES), {}, probs, np.zeros((0, 1, 1, 3)), np.arange(0), logits)
    metrics, findings = evaluation_findings(scored, rows, cfg)
    doc = findings.calibration
    assert doc["accepted"] is False and doc["temperature"] == 1.0, doc
    assert doc["fitted_temperature"] == pytest.approx(np.exp(LOG_T_BOUNDS[1]), rel=1e-3), doc
    assert metrics["temperature"] == 1.0 and metrics["temperature_accepted"] == 0.0, metrics
    kind, coverage = cfg.predict.ood_score, cfg.predict.abstain_coverage
    unk = coverage_threshold(ood_scores(logits["dev"], 1.0, kind), coverage)
    assert findings.abstention["threshold"] == pytest.approx(unk), "UNK on the served T"
    assert findings.abstention["temperature"] == 1.0, findings.abstention
    mel = CLASSES.index("MEL")
    expected = threshold_at_specificity(probs["dev"][0][:, mel], labels["dev"] == mel, 0.90)
    assert metrics["mel_threshold_at_spec90"] == pytest.approx(expected), "MEL on the served T"
    served = findings.predictions["test"][[f"prob_{c}" for c in CLASSES]].to_numpy()
    np.testing.assert_allclose(served, probs["test"][0], atol=1e-9)
