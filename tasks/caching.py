"""Cache keys from content hashes, config entries and library code; retries for I/O faults only."""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from prefect.cache_policies import TASK_SOURCE, CacheKeyFnPolicy, CachePolicy

from skin.config import config_digest, digest
from skin.storage import StorageError


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


def file_hash(path: str | Path | None) -> str | None:
    """Content hash of a local file (a checkpoint): its path says nothing about what it holds."""
    if path is None or not Path(path).is_file():
        return None
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _param(inputs: dict[str, Any], dotted: str) -> Any:
    """A parameter, or one attribute of it (`manifest.hash`: the content, not where it lives)."""
    name, *attrs = dotted.split(".")
    value = inputs.get(name)
    for attr in attrs:
        value = getattr(value, attr, None)
    return value


def keyed_on(
    *params: str,
    config_sections: Sequence[str] = (),
    files: Sequence[str] = (),
    code: Sequence[str] = (),
) -> CachePolicy:
    """The one way a stage's key is made: the task parameters it takes (references that carry
    content hashes, never tables or models; `ref.hash` keys on one attribute), the contents of the files named by `files`, the
    entries of its typed `config` that it reads, the library modules in `code`, and the task's own
    source. A stage re-runs when exactly what it depends on changes."""
    modules = tuple(code)

    def key(_ctx: Any, inputs: dict[str, Any]) -> str:
        cfg = inputs.get("config")
        picked = config_digest(cfg, config_sections) if config_sections else None
        contents = {f: file_hash(inputs.get(f)) for f in files}
        values = {p: _param(inputs, p) for p in params}
        return digest(values, contents, picked, code_hash(modules))

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

DATA_CODE = (
    "skin.config",
    "skin.listing",
    "skin.split",
    "skin.balance",
    "skin.manifest",
    "skin.datastages",
)
IMAGE_CODE = ("skin.images", "skin.imagecache", "skin.storage", "skin.fetch", "skin.shards")
MODEL_CODE = (
    *IMAGE_CODE,
    "skin.model",
    "skin.weights",
    "skin.data",
    "skin.features",
    "skin.train",
    "skin.checkpoint",
    "skin.feeds",
    "skin.stages",
    "skin.runs",
    "skin.config",
    "skin.distributed",
    "skin.launch",
)
EVAL_CODE = (*MODEL_CODE, "skin.evaluate", "skin.report", "skin.tracking", "skin.abstain")
REGISTRY_CODE = (
    "skin.registry",
    "skin.modelcard",
    "skin.tracking",
    "skin.compare",
    "skin.bootstrap",
    "skin.slices",
    "skin.predict",
)
