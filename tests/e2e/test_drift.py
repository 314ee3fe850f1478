"""Drift before retraining, end to end: the pipeline's retrain policy and `skin drift`."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from skin.base.config import dotted_to_nested
from skin.data.sample_data import write_sample_dataset
from tests.helpers import invoke, tracking_db
from tests.monitor.test_drift import tinted_copy
from tests.recipes import TINY

pytestmark = [pytest.mark.slow, pytest.mark.server]


def _artifact(key: str) -> str:
    """The latest Prefect artifact under `key`, as text."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    async def latest() -> list:
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                sort=ArtifactSort.CREATED_DESC,
                limit=1,
            )

    found = asyncio.run(latest())
    return str(found[0].data) if found else ""


def test_new_data_policy_skips_one_new_image_and_drift_flags_a_colour_cast(
    tmp_path: Path, sample_data: Path, prefect_api
) -> None:
    from flows.pipeline import pipeline_flow

    data = tmp_path / "data"
    shutil.copytree(sample_data, data)
    name = f"skin-drift-{uuid.uuid4().hex[:8]}"
    ov = {
        **TINY,
        "train.epochs": 2,
        "evaluate.bootstrap": 0,
        "work_dir": str(tmp_path / "work"),
        "tracking.tracking_uri": tracking_db(tmp_path),
        "tracking.experiment": f"test-{uuid.uuid4().hex[:8]}",
        "tracking.registered_model": name,
        "retrain.when": "new-data",
        "drift.sample": 120,
    }
    first = pipeline_flow(data_uri=str(data), overrides=ov)
    assert first["retrained"] and "no champion" in first["reason"], first["reason"]
    assert first["registration"]["alias"] == "champion", first["registration"]

    write_sample_dataset(str(data), {"NV": 1}, size=40, seed=99)  # one new image
    second = pipeline_flow(data_uri=str(data), overrides=ov)
    assert second["retrained"] is False, second
    assert "do not exceed retrain.min_new_fraction" in second["reason"], second["reason"]
    assert "train" not in second["stages"], second["stages"]
    assert second["stages"]["check-drift"] == "ran", "check-drift runs first, whatever the policy"
    on_drift = pipeline_flow(data_uri=str(data), overrides={**ov, "retrain.when": "drift"})
    assert on_drift["retrained"] is False, on_drift
    assert on_drift["stages"]["check-drift"] == "cached", "the same data, the same champion"
    assert "fewer than drift.min_images" in on_drift["reason"], on_drift["reason"]

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(dotted_to_nested(ov)))
    cast = tinted_copy(sample_data, tmp_path / "cast")
    code, out = invoke(
        "--json", "drift", "--data", str(cast), "--config", str(config), "--fail-on-drift"
    )
    found = json.loads(out)
    assert code == 3 and found["drifted"], found["checks"]
    flagged = {c["check"] for c in found["checks"] if c["drifted"]}
    assert {"property:red", "embedding_mmd"} <= flagged, found["checks"]
    assert found["reference"]["label"] == f"models:/{name}@champion"
    assert found["unit"] == "lesions" and found["groups_current"] > 0, found  # repeat photos

    run = MlflowClient(ov["tracking.tracking_uri"]).get_run(found["mlflow_run_id"])
    assert run.data.tags["skin.stage"] == "check-drift", run.data.tags
    assert run.data.metrics["drift_detected"] == 1.0, run.data.metrics
    assert run.data.metrics["drift_embedding_mmd_p"] < 0.01, run.data.metrics
    assert "DRIFT" in _artifact("skin-drift-report"), "the report is a Prefect artifact"

    code, out = invoke("--json", "drift", "--data", str(cast), "--config", str(config))
    again = json.loads(out)
    assert code == 0 and again["stages"]["check-drift"] == "cached", again["stages"]

    code, out = invoke(
        "--json", "drift", "--data", str(data), "--config", str(config), "--current", "all"
    )
    same = json.loads(out)
    assert code == 0 and not same["drifted"] and same["checks"], same["checks"]

    retrained = pipeline_flow(data_uri=str(cast), overrides={**ov, "retrain.when": "drift"})
    assert retrained["retrained"] and "DRIFT" in retrained["reason"], retrained["reason"]
    assert retrained["stages"]["check-drift"] == "cached", "the CLI's check is reused"
    assert retrained["stages"]["train"] == "ran", retrained["stages"]
