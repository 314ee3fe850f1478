"""skin-prepare: every shard of a manifest's decoded images built in shared.uri, then the index;
a second run reuses them all; the Dask variants spread the same flow over a cluster."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect_dask import DaskTaskRunner

from flows.prepare import (
    build_shards_dask_flow,
    build_shards_flow,
    build_shards_flow_on_dask,
    dask_runner,
)
from tests.helpers import make_manifest
from tests.recipes import TINY


@pytest.mark.server
def test_the_flow_builds_every_shard_once(tmp_path: Path, sample_data: Path, prefect_api) -> None:
    uri, _ = make_manifest(tmp_path, sample_data)
    ov = {**TINY, "work_dir": str(tmp_path / "work"), "shared.uri": str(tmp_path / "shared"),
          "shared.shard_rows": 128}  # fmt: skip
    first = build_shards_flow(manifest=uri, data_uri=str(sample_data), overrides=ov)
    assert (first["shards"], first["built"], first["reused"]) == (3, 3, 0), first
    assert first["count"] == 320 and first["bad"] == 0, first
    assert (Path(first["uri"]) / "meta.json").is_file() and first["uri"].startswith(
        ov["shared.uri"]
    )
    again = build_shards_flow(manifest=uri, data_uri=str(sample_data), overrides=ov)
    assert (again["built"], again["reused"]) == (0, 3), again


@pytest.mark.server
def test_without_a_shared_uri_the_flow_is_refused(
    tmp_path: Path, sample_data: Path, prefect_api
) -> None:
    uri, _ = make_manifest(tmp_path, sample_data)
    with pytest.raises(ValueError, match=r"shared\.uri"):
        build_shards_flow(manifest=uri, data_uri=str(sample_data), overrides=dict(TINY))


def test_the_dask_variants_run_on_a_scheduler_or_a_local_cluster_of_processes() -> None:
    remote = dask_runner("tcp://scheduler:8786")
    assert isinstance(remote, DaskTaskRunner) and remote.address == "tcp://scheduler:8786"
    local = dask_runner(None, workers=3)
    assert local.address is None
    assert local.cluster_kwargs == {"n_workers": 3, "threads_per_worker": 1, "processes": True}
    on_dask = build_shards_flow_on_dask("tcp://scheduler:8786")
    assert isinstance(on_dask.task_runner, DaskTaskRunner) and on_dask.name == "skin-prepare"
    assert build_shards_dask_flow.name == "skin-prepare-dask"
    assert isinstance(build_shards_dask_flow.task_runner, DaskTaskRunner)
