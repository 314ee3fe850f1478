"""A leak measured on a real run: planted copies of train images in test make the held-out
metrics optimistic, and the audit says by how much (they drop once the copies are left out);
the pipeline records the audit in the run."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.helpers import planted_images
from tests.recipes import TINY

pytestmark = [pytest.mark.slow, pytest.mark.server]


def test_planted_cross_split_copies_inflate_test_metrics_and_the_audit_measures_it(
    tmp_path: Path, prefect_api: None
) -> None:
    from flows.audit import audit_flow
    from flows.pipeline import pipeline_flow

    data = tmp_path / "data"
    images, truth = planted_images(per_class=20, copies_per_kind=15, size=64, seed=5)
    for s in images:
        (data / s.label).mkdir(parents=True, exist_ok=True)
        (data / s.label / f"{s.image_id}.jpg").write_bytes(s.data)
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ov = {
        **TINY,
        "train.epochs": 15,
        "work_dir": str(tmp_path / "work"),
        "tracking.tracking_uri": tracking,
        "tracking.experiment": f"audit-{uuid.uuid4().hex[:8]}",
        "tracking.log_model": False,
        "evaluate.bootstrap": 0,
        "split.balance": "none",
        "audit.group_near_duplicates": False,  # the split as it was before the audit: leaky
    }
    run = pipeline_flow(data_uri=str(data), overrides=ov)
    assert run["stages"]["audit"] == "ran"
    found = audit_flow(
        data_uri=str(data), overrides=ov, manifest=run["manifest_uri"], run_id=run["run_id"]
    )
    leaks = found["leaks"]
    assert leaks["test_images_leaked"] >= 10, leaks
    effect = leaks["effect"]
    print({m: (round(v["all"], 3), round(v["without_leaks"], 3)) for m, v in effect.items()})
    assert effect["accuracy"]["change"] < 0, f"leaked copies did not flatter the run: {effect}"
    assert effect["balanced_accuracy"]["change"] < 0, effect
    tags = MlflowClient(tracking).get_run(run["run_id"]).data.tags
    assert int(tags["audit_near_duplicate_pairs"]) >= len(truth) * 0.9, tags
    artifacts = {a.path for a in MlflowClient(tracking).list_artifacts(run["run_id"], "audit")}
    assert "audit/summary.md" in artifacts and "audit/clusters.csv" in artifacts, artifacts
