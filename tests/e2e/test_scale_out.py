"""Scale-out with Prefect: shards fanned out over a Dask cluster, task results shared via S3."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from skin.base.config import dotted_to_nested as nested
from tests.helpers import invoke, snapshot
from tests.recipes import TINY


def overrides(tmp: Path, bucket: str, **extra: object) -> dict[str, object]:
    return {**TINY, "work_dir": str(tmp / "work"), "shared.uri": f"s3://{bucket}/shared",
            "shared.shard_rows": 64, **extra}  # fmt: skip


@pytest.mark.server
@pytest.mark.slow
def test_prepare_fans_shards_out_over_a_dask_cluster(
    tmp_path: Path, sample_data: Path, bucket: str, s3_client, prefect_api
) -> None:
    from flows.prepare import build_shards_flow

    shared = f"s3://{bucket}/shared"
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(nested({**TINY, "work_dir": str(tmp_path / "work"),
                                             "shared.shard_rows": 64})))  # fmt: skip
    args = ["--data", str(sample_data), "--config", str(config), "--shared", shared]
    code, out = invoke("--json", "split", "--out", str(tmp_path / "m.parquet"), *args)
    assert code == 0, out
    assert json.loads(out)["stored_as"].startswith(f"{shared}/manifests/"), (
        "with --shared the manifests live in the shared store"
    )
    code, out = invoke("--json", "prepare", *args, "--dask", "local", "--dask-workers", "2")
    assert code == 0, out
    done = json.loads(out)
    assert done["shards"] == -(-done["count"] // 64) and done["built"] == done["shards"]
    assert done["bad"] == 0
    keys = snapshot(s3_client, bucket)
    assert len([k for k in keys if "/shard-" in k and k.endswith(".npy")]) == done["shards"]
    # Another machine (its own work_dir) runs the same stage: nothing is decoded again.
    again = build_shards_flow(
        data_uri=str(sample_data), overrides=overrides(tmp_path / "b", bucket)
    )
    assert again["built"] == 0 and again["reused"] == done["shards"]
    assert snapshot(s3_client, bucket) == keys, "the shared store is not rewritten"


@pytest.mark.server
@pytest.mark.slow
def test_s3_result_storage_shares_cached_results_between_machines(
    tmp_path: Path, sample_data: Path, bucket: str, s3_client, prefect_api
) -> None:
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    from flows.results import clear_default_result_storage
    from flows.stages import split_flow

    ov = {**TINY, "work_dir": str(tmp_path / "work")}
    code, out = invoke("--json", "result-storage", f"s3://{bucket}/prefect-results")
    try:
        assert code == 0, out
        assert json.loads(out) == {"block": "s3-bucket/skin-results", "server_default": True,
                                   "uri": f"s3://{bucket}/prefect-results"}  # fmt: skip
        with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: tmp_path / "machine-a"}):
            first = split_flow(data_uri=str(sample_data), overrides=ov)
        assert first["stages"] == {"list-images": "ran", "audit": "ran", "split": "ran",
                                   "undersample": "ran"}  # fmt: skip
        stored = [k for k in snapshot(s3_client, bucket) if k.startswith("prefect-results/")]
        assert stored, "task results were written to S3"
        # A machine with an empty local result store still finds the cached results in S3.
        with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: tmp_path / "machine-b"}):
            second = split_flow(data_uri=str(sample_data), overrides=ov)
        assert second["stages"] == {"list-images": "ran", "audit": "cached", "split": "cached",
                                    "undersample": "cached"}  # fmt: skip
        assert second["manifest"] == first["manifest"]
    finally:
        clear_default_result_storage()
    # Control: without the shared storage, that empty local store means the work runs again.
    with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: tmp_path / "machine-c"}):
        third = split_flow(data_uri=str(sample_data), overrides=ov)
    assert third["stages"]["split"] == "ran"
