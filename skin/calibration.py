"""Temperature scaling: one scalar T fitted on dev logits so probabilities mean what they say.

T minimises the dev negative log-likelihood; it is fitted as log T (so T stays positive) by
scipy's L-BFGS-B with the exact gradient. The NLL is convex in 1/T, so there is one minimum.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax, softmax

from skin.bootstrap import check_predictions
from skin.evaluate import expected_calibration_error

LOG_T_BOUNDS = (-5.0, 5.0)  # T in [0.007, 148]


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
    before, after = softmax(logits, axis=1), apply_temperature(logits, temperature)
    return {
        "temperature": temperature,
        "ece_before": expected_calibration_error(y, before),
        "ece_after": expected_calibration_error(y, after),
        "log_loss_before": nll(logits, y),
        "log_loss_after": nll(logits, y, temperature),
    }
