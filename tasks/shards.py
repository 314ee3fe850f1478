"""Shard building as Prefect tasks: one task per shard, so a task runner fans them out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from skin.base.config import PipelineConfig
from skin.data import manifest as mf
from skin.data.shards import ShardInfo, build_shard, finish, shard_count, shards_uri
from skin.data.stages import ManifestRef
from tasks.caching import IO_RETRIES, keyed_on

_SHARD_KEY = ("manifest.hash", "size", "index", "shard_rows", "uri")


def shard_plan(manifest_uri: str, cfg: PipelineConfig) -> dict[str, Any]:
    """Where a manifest's shards go and how many there are (cheap: reads the manifest only)."""
    if cfg.shared.uri is None:
        raise ValueError("set shared.uri (an s3:// prefix) to build shared image shards")
    from skin.train.model import build_model, input_spec  # torch, timm: only with shared shards

    skeleton = build_model(cfg.model.name, len(cfg.data.classes), pretrained=False)
    size = input_spec(skeleton, cfg.train.image_size).cache_size
    manifest = mf.read(manifest_uri)
    uri = shards_uri(cfg.shared.uri, manifest, size)
    return {
        "uri": uri,
        "size": size,
        "count": len(manifest),
        "shard_rows": cfg.shared.shard_rows,
        "shards": shard_count(len(manifest), cfg.shared.shard_rows),
    }


@task(
    name="build-shard",
    cache_policy=keyed_on(*_SHARD_KEY),
    task_run_name="build-shard-{index}",
    **IO_RETRIES,
)
def build_shard_task(
    manifest: ManifestRef,
    size: int,
    index: int,
    shard_rows: int,
    uri: str,
    fetch_root: str,
) -> ShardInfo:
    """Fetch and decode one shard's images and upload it (skipped if already in the store)."""
    return build_shard(mf.read(manifest.uri), size, index, shard_rows, uri, Path(fetch_root))


@task(name="finish-shards", **IO_RETRIES)
def finish_shards_task(uri: str, count: int, size: int, shard_rows: int) -> dict[str, Any]:
    """Write the shared cache's index last: readers then see it complete."""
    return finish(uri, count, size, shard_rows)
