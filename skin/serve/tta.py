"""Test-time augmentation: the one definition of a model's answer over the 8 flips and rotations.

A TTA prediction is the mean of the views' logits, then softmax(mean logits / T). Evaluation
(`skin.evaluate.stage.predict_rows`), `skin.serve.predict.Predictor` (so `skin predict`, the served pyfunc, an
ensemble's members and the gate's champion) all call `view_logits` and `probabilities` here.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from skin.stats.calibration import apply_temperature
from skin.train.datasets import DIHEDRAL, dihedral_view

DEFINITION = "softmax(mean over the views of the logits / temperature)"


def views(tta: bool) -> tuple[tuple[int, bool], ...]:
    """The dihedral views scored: all 8 with TTA, the image as given without."""
    return DIHEDRAL if tta else DIHEDRAL[:1]


@torch.inference_mode()
def view_logits(
    net: torch.nn.Module,
    x: torch.Tensor,
    prep: Callable[[torch.Tensor], torch.Tensor],
    *,
    tta: bool,
    dtype: torch.dtype | None,
) -> torch.Tensor:
    """The float logits [N, classes] of uint8 NCHW images `x` (on the net's device), averaged
    over the views.

    Logits, not softmaxes, are averaged (why): the temperature is fitted on one logit vector
    per image and the UNK score (energy needs logits; msp reads softmax(z / T)) is a function of
    it, so T and every threshold chosen on dev hold for exactly what is served; the file's
    `logit_*` columns then reproduce every probability. Averaging logits is the normalised
    geometric mean of the views' probabilities (log-linear pooling). Convention is split (VGG
    averaged softmaxes; ttach's default `mean` merge averages the model's outputs, usually
    logits); on the tiny run of tests/evaluate/test_served_evaluation.py the two differed by at most
    4.7e-4 in probability, so the choice is made for consistency, not accuracy.
    """
    logits = []
    for k, transpose in views(tta):
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            logits.append(net(prep(dihedral_view(x, k, transpose))).float())
    return torch.stack(logits).mean(0)


def probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """The probabilities of mean TTA logits: softmax(logits / T) (T = 1: raw)."""
    return apply_temperature(np.asarray(logits, dtype=np.float64), temperature)
