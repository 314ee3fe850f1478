"""Drift before retraining, end to end: the pipeline's retrain policy and `skin drift`."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest
import yaml

from skin.config import dotted_to_nested
from skin.sample_data import write_sample_dataset
from tests.helpers import invoke
from tests.recipes import TINY
from tests.test_drift import tinted_copy

pytestmark = [pytest.mark.slow, pytest.mark.server]


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
        "tracking.tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
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

    code, out = invoke("--json", "drift", "--data", str(cast), "--config", str(config))
    again = json.loads(out)
    assert code == 0 and again["stages"]["check-drift"] == "cached", again["stages"]

    code, out = invoke(
        "--json", "drift", "--data", str(data), "--config", str(config), "--current", "all"
    )
    same = json.loads(out)
    assert code == 0 and not same["drifted"] and same["checks"], same["checks"]
