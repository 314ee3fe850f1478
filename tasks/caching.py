"""Cache keys from content hashes and config sections (never from DataFrames or models)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from prefect.cache_policies import TASK_SOURCE, CacheKeyFnPolicy, CachePolicy


def digest(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def _pick(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def keyed_on(*params: str, config_sections: Sequence[str] = ()) -> CachePolicy:
    """A policy keyed on some task parameters (strings, hashes) and some (dotted) entries of the
    `config` parameter, plus the task's source: a stage re-runs when exactly what it depends on changes."""

    def key(_ctx: Any, inputs: dict[str, Any]) -> str:
        cfg = inputs.get("config") or {}
        picked = {name: _pick(cfg, name) for name in config_sections}
        return digest({p: inputs.get(p) for p in params}, picked)

    return CacheKeyFnPolicy(cache_key_fn=key) + TASK_SOURCE
