"""Temperature scaling: one scalar T fitted on dev logits so probabilities mean what they say.

T minimises the dev negative log-likelihood; it is fitted as log T (so T stays positive) by
scipy's L-BFGS-B with the exact gradient. The NLL is convex in 1/T, so there is one minimum.
`calibrate` judges the fit before it is served: one stopped at a bound of log T (no minimum
inside: dev predictions no better than uniform) or one that raises dev log loss over T = 1 is
rejected with a warning, and T = 1 (the raw softmax) is kept.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import log_softmax, softmax

from skin.stats.bootstrap import check_predictions
from skin.stats.metrics import expected_calibration_error

LOG_T_BOUNDS = (-5.0, 5.0)  # T in [0.007, 148]
BOUND_TOLERANCE = 1e-3  # in log T: a fit this close to a bound stopped there, not at a minimum

log = logging.getLogger(__name__)


def nll(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood (log loss) of softmax(logits / T)."""
    return float(-log_softmax(logits / temperature, axis=1)[np.arange(len(y)), y].mean())


def nll_and_gradient(
    log_t: np.ndarray, logits: np.ndarray, y: np.ndarray
) -> tuple[float, np.ndarray]:
    """NLL at T = exp(log_t) and its derivative in log_t."""
    inv_t = np.exp(-log_t[0])
    scaled = logits * inv_t
    logp = log_softmax(scaled, axis=1)
    rows = np.arange(len(y))
    value = -logp[rows, y].mean()
    d_inv_t = ((np.exp(logp) * logits).sum(1) - logits[rows, y]).mean()  # dNLL / d(1/T)
    return float(value), np.array([-d_inv_t * inv_t])


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The T that minimises NLL of softmax(logits / T) on these (dev) images."""
    check_predictions(y, logits, "dev logits")
    from scipy.optimize import minimize  # ~0.5 s to import: only when a temperature is fitted

    result = minimize(
        nll_and_gradient,
        x0=np.zeros(1),
        args=(logits.astype(np.float64), y),
        jac=True,
        method="L-BFGS-B",
        bounds=[LOG_T_BOUNDS],
    )
    if not result.success:
        raise RuntimeError(f"temperature fit did not converge: {result.message}")
    return float(np.exp(result.x[0]))


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Calibrated probabilities softmax(logits / T)."""
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    return softmax(logits / temperature, axis=1)


def calibration_report(logits: np.ndarray, y: np.ndarray, temperature: float) -> dict[str, float]:
    """ECE and log loss before and after scaling, on the images given (test)."""
    check_predictions(y, logits, "logits")
    logits = np.asarray(logits, dtype=np.float64)  # as served: `skin.serve.tta.probabilities`
    before, after = softmax(logits, axis=1), apply_temperature(logits, temperature)
    return {
        "temperature": temperature,
        "ece_before": expected_calibration_error(y, before),
        "ece_after": expected_calibration_error(y, after),
        "log_loss_before": nll(logits, y),
        "log_loss_after": nll(logits, y, temperature),
    }


@dataclass(frozen=True)
class Calibration:
    """A judged temperature fit: the T served (the fit, or 1 when rejected), the fit, and why."""

    temperature: float  # what is served and what every threshold is chosen on
    fitted: float  # what the optimiser returned (nan when it failed)
    accepted: bool
    reason: str
    dev_log_loss_raw: float  # at T = 1
    dev_log_loss_fitted: float  # at the fitted T

    def to_json(self) -> dict[str, Any]:
        """calibration.json's judgement fields (`temperature` is what prediction reads)."""
        return {
            "temperature": self.temperature,
            "accepted": self.accepted,
            "reason": self.reason,
            "fitted_temperature": self.fitted,
            "dev_log_loss_raw": self.dev_log_loss_raw,
            "dev_log_loss_fitted": self.dev_log_loss_fitted,
        }


def judge_temperature(logits: np.ndarray, y: np.ndarray, fitted: float) -> Calibration:
    """Accept a fitted T unless it sits at a bound of log T or raises dev log loss over T = 1."""
    raw = nll(logits, y)
    after = nll(logits, y, fitted) if math.isfinite(fitted) and fitted > 0 else math.nan
    at_bound = math.isfinite(after) and any(
        abs(math.log(fitted) - b) < BOUND_TOLERANCE for b in LOG_T_BOUNDS
    )
    if not math.isfinite(after):
        reason = f"the fit gave no usable temperature ({fitted})"
    elif at_bound:
        reason = (
            f"T = {fitted:.4g} is at the optimiser's bound (log T in {LOG_T_BOUNDS}): no minimum"
            " inside, the dev predictions are no better than uniform"
        )
    elif after > raw:
        reason = f"T = {fitted:.4g} raises dev log loss from {raw:.4f} to {after:.4f}"
    else:
        note = f"dev log loss {raw:.4f} at T = 1, {after:.4f} at T = {fitted:.4g}"
        return Calibration(fitted, fitted, True, note, raw, after)
    log.warning("temperature fit rejected, T = 1 (raw softmax) kept: %s", reason)
    return Calibration(1.0, fitted, False, reason, raw, after)


def calibrate(logits: np.ndarray, y: np.ndarray) -> Calibration:
    """Fit T on these (dev) logits and judge the fit; one that did not converge is rejected too."""
    try:
        fitted = fit_temperature(logits, y)
    except RuntimeError as err:  # no convergence: served uncalibrated, said so
        log.warning("temperature fit rejected, T = 1 (raw softmax) kept: %s", err)
        raw = nll(logits, y)
        return Calibration(1.0, math.nan, False, str(err), raw, math.nan)
    return judge_temperature(logits, y, fitted)
