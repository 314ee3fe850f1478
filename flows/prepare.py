"""skin-prepare: decode a manifest's images once into shared shards, fanned out over workers.

The default task runner uses threads in the flow's process. For a large dataset, run the same
flow on a Dask cluster (`build_shards_flow_on_dask`, or `skin prepare --dask tcp://scheduler:8786`):
each shard is one task that fetches, decodes and uploads its images, so the decode spreads over
every Dask worker, and a worker that dies only costs its shard (retried; finished shards are
kept in the store and skipped).
"""

from __future__ import annotations

import os
from typing import Any

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import flow_config, resolve_manifest, shard_stages
from flows.outcomes import ShardsResult


@flow(name="skin-prepare", task_runner=ThreadPoolTaskRunner(max_workers=4))
def build_shards_flow(
    manifest: str = "latest",
    data_uri: str | None = None,
    config_path: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> ShardsResult:
    """Build every shard of the manifest's decoded images in shared.uri, then its index."""
    cfg = flow_config(config_path, overrides, data_uri, tracking=False)
    ref = resolve_manifest(manifest, cfg)
    return shard_stages(cfg, ref, {})


def dask_runner(address: str | None = None, workers: int = 2) -> Any:
    """A DaskTaskRunner: an existing scheduler at `address`, or a local cluster of `workers`
    single-threaded processes (decoding is CPU work: processes, not threads)."""
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(
        cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True}
    )


def build_shards_flow_on_dask(address: str | None = None, workers: int = 2):
    """skin-prepare with its shards spread over a Dask cluster."""
    return build_shards_flow.with_options(task_runner=dask_runner(address, workers))


# For deployments: the Dask scheduler comes from the worker's environment.
build_shards_dask_flow = build_shards_flow.with_options(
    name="skin-prepare-dask",
    task_runner=dask_runner(
        os.environ.get("SKIN_DASK_ADDRESS"), int(os.environ.get("SKIN_DASK_WORKERS", "2"))
    ),
)
