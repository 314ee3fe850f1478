"""A timm classifier: built with its weights or rebuilt from a checkpoint, frozen, its input described."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from skin.base.config import PipelineConfig
from skin.train import checkpoint as ckpt
from skin.train.weights import WeightsError, apply_weights, load_weights_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputSpec:
    """What the model expects: the square input side, normalisation, and the decode size."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    crop_pct: float

    @property
    def cache_size(self) -> int:
        """Side the images are decoded to: the eval resize before the centre crop."""
        return max(self.size, round(self.size / self.crop_pct))


def build_model(
    name: str,
    num_classes: int,
    *,
    pretrained: bool = True,
    weights: str | None = None,
    drop_rate: float = 0.0,
) -> nn.Module:
    """A timm model with `num_classes` outputs. Weights: a file or package spec when given, else
    timm's own source (hub or cache) when `pretrained`, else random. Never silently random."""
    if weights:
        model = timm.create_model(
            name, pretrained=False, num_classes=num_classes, drop_rate=drop_rate
        )
        apply_weights(model, load_weights_file(weights))
        log.info("loaded %s weights from %s", name, weights)
        return model
    if not pretrained:
        return timm.create_model(
            name, pretrained=False, num_classes=num_classes, drop_rate=drop_rate
        )
    try:
        return timm.create_model(
            name, pretrained=True, num_classes=num_classes, drop_rate=drop_rate
        )
    except Exception as err:  # hub errors come in many types: connection, HTTP, missing file
        raise WeightsError(
            f"cannot get pretrained weights for {name} from timm's source (hub or cache): "
            f"{type(err).__name__}: {err}. Offline? Supply --weights FILE (a .pth/.pt/.safetensors "
            "path or s3:// URI), or pass --no-pretrained to train from random weights."
        ) from err


def load_model_from_checkpoint(
    path: str | Path, device: torch.device
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from a checkpoint's own config (no network: weights come from the file)."""
    state = ckpt.load(path, map_location="cpu")
    cfg = PipelineConfig.model_validate(state["config"])
    model = timm.create_model(cfg.model.name, pretrained=False, num_classes=len(state["classes"]))
    model.load_state_dict(state["model"])
    return model.to(device).eval(), state


def classifier_of(model: nn.Module) -> nn.Module:
    return model.get_classifier()


def apply_freeze(model: nn.Module, policy: str) -> None:
    """`head`: only the classifier trains; `none`: everything; `last:N`: the last N blocks,
    the layers after them and the classifier."""
    if policy == "none":
        model.requires_grad_(True)
        return
    model.requires_grad_(False)
    classifier_of(model).requires_grad_(True)
    if policy == "head":
        return
    n = int(policy.split(":", 1)[1])
    blocks = (
        getattr(model, "blocks", None)
        or getattr(model, "stages", None)
        or getattr(model, "layers", None)
    )
    if blocks is None:
        raise ValueError(f"freeze {policy!r}: model {type(model).__name__} has no blocks/stages")
    for block in list(blocks)[-n:]:
        block.requires_grad_(True)
    names = [name for name, _ in model.named_children()]
    container = next(c for c in ("blocks", "stages", "layers") if c in names)
    for name in names[names.index(container) + 1 :]:
        getattr(model, name).requires_grad_(True)


def train_mode(model: nn.Module) -> None:
    """Train mode, except BatchNorm in frozen parts stays in eval: the notebook let frozen BN
    statistics drift with every batch, which changes a 'frozen' backbone."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()


def is_head_only(model: nn.Module) -> bool:
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    head = {id(p) for p in classifier_of(model).parameters()}
    return bool(trainable) and trainable <= head


def input_spec(model: nn.Module, image_size: int | None = None) -> InputSpec:
    """timm's data config for the model (size, mean, std, interpolation), optionally resized."""
    cfg = timm.data.resolve_data_config({}, model=model)
    size = image_size or int(cfg["input_size"][-1])
    return InputSpec(
        size=size,
        mean=tuple(float(x) for x in cfg["mean"]),  # type: ignore[arg-type]
        std=tuple(float(x) for x in cfg["std"]),  # type: ignore[arg-type]
        interpolation=str(cfg.get("interpolation", "bicubic")),
        crop_pct=float(cfg.get("crop_pct", 0.875)),
    )


@torch.no_grad()
def pooled_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Backbone output right before the classifier (global pool, no dropout in eval)."""
    return model.forward_head(model.forward_features(x), pre_logits=True)
