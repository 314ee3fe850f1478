"""Load any model reference the pipeline serves: one checkpoint, or an ensemble of them.

Above both `skin.serve.predict` (one model) and `skin.search.ensemble` (an average of models), so neither
imports the other's loader: an ensemble's members are checkpoints, loaded one by one below.
"""

from __future__ import annotations

import torch

from skin.serve.averaging import EnsemblePredictor, load_ensemble
from skin.serve.predict import MEMBERS_FILE, Predictor, checkpoint_predictor, resolved_model
from skin.track.refs import DEFAULT_MODEL, ModelRef, as_model_ref
from skin.train.loop import pick_device


def load_predictor(
    ref: ModelRef | str = DEFAULT_MODEL,
    device: str | torch.device = "auto",
    *,
    tta: bool = False,
    tracking_uri: str | None = None,
    batch_size: int = 64,
) -> Predictor | EnsemblePredictor:
    """A Predictor from `models:/NAME@ALIAS`, `models:/NAME/VERSION`, `models:/m-ID`,
    `runs:/RUN_ID/model`, a bare run id, or a checkpoint file (path or s3:// URI); an ensemble
    (a members.json) gives an `EnsemblePredictor` with the same interface."""
    dev = pick_device(device) if isinstance(device, str) else device
    with resolved_model(as_model_ref(ref), tracking_uri) as (path, source):
        if path.name == MEMBERS_FILE:  # an ensemble: its members, averaged
            return load_ensemble(path, dev, source, tta=tta, batch_size=batch_size)
        return checkpoint_predictor(path, dev, source, tta=tta, batch_size=batch_size)
