"""Cache keys from content hashes, config entries and library code; retries for I/O faults only."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from prefect.cache_policies import TASK_SOURCE, CacheKeyFnPolicy, CachePolicy

from skin.storage import StorageError


def digest(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


@cache
def code_hash(modules: tuple[str, ...]) -> str:
    """Hash of the library modules a stage runs: editing them invalidates its cached results
    (Prefect's TASK_SOURCE only sees the thin task function itself)."""
    h = hashlib.sha256()
    for name in sorted(modules):
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise ValueError(f"cache key names unknown module {name!r}")
        h.update(name.encode())
        h.update(Path(spec.origin).read_bytes())
    return h.hexdigest()[:16]


def _pick(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def keyed_on(
    *params: str, config_sections: Sequence[str] = (), code: Sequence[str] = ()
) -> CachePolicy:
    """A policy keyed on some task parameters (strings and hashes, never tables or models), some
    dotted entries of the `config` parameter, the library modules in `code`, and the task's own
    source: a stage re-runs when exactly what it depends on changes."""
    modules = tuple(code)

    def key(_ctx: Any, inputs: dict[str, Any]) -> str:
        cfg = inputs.get("config") or {}
        picked = {name: _pick(cfg, name) for name in config_sections}
        return digest({p: inputs.get(p) for p in params}, picked, code_hash(modules))

    return CacheKeyFnPolicy(cache_key_fn=key) + TASK_SOURCE


IO_ERRORS = (StorageError, OSError, ConnectionError, TimeoutError)


def retry_on_io(_task: Any, _task_run: Any, state: Any) -> bool:
    """Retry transient I/O failures; a bad setting or bad data fails at once, not four times."""
    return isinstance(getattr(state, "data", None), IO_ERRORS)


IO_RETRIES: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": [2, 10, 30],
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_on_io,
}

DATA_CODE = ("skin.listing", "skin.split", "skin.balance", "skin.manifest", "skin.datastages")
IMAGE_CODE = ("skin.images", "skin.imagecache", "skin.storage", "skin.fetch", "skin.shards")
MODEL_CODE = (
    *IMAGE_CODE,
    "skin.model",
    "skin.weights",
    "skin.data",
    "skin.features",
    "skin.train",
    "skin.checkpoint",
    "skin.pipeline",
    "skin.distributed",
    "skin.launch",
)
EVAL_CODE = (*MODEL_CODE, "skin.evaluate", "skin.report")
