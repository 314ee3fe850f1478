"""The check-drift task: it records the report of a manifest against a listing in an MLflow run of
its own experiment, and a check with another backbone writes its own report folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from skin.data.location import DatasetState
from skin.data.stages import list_images, save_listing
from skin.monitor.drift import resolve_reference
from tasks.drift import check_drift_task, drift_experiment
from tests.helpers import make_manifest, tinted_copy, tiny_config, tracking_db


@pytest.fixture
def cast(tmp_path: Path, sample_data: Path):
    """The sample data's manifest as the reference, and a colour-cast copy as the new data."""
    manifest_uri, _ = make_manifest(tmp_path, sample_data)
    reference = resolve_reference(manifest_uri, None, tmp_path / "ref")
    return reference, tinted_copy(sample_data, tmp_path / "cast")


def _checked(tmp_path: Path, data: Path, reference, **extra: object) -> dict:
    tracking = tracking_db(tmp_path)
    cfg = tiny_config(
        tmp_path, data, **{"tracking.tracking_uri": tracking, "drift.embeddings": False, **extra}
    )
    listing = save_listing(list_images(cfg.data), DatasetState.of(cfg))
    return check_drift_task.fn(listing=listing, reference=reference, config=cfg)


def test_check_drift_task_records_a_cast_against_a_manifest_in_mlflow(tmp_path: Path, cast) -> None:
    from mlflow import MlflowClient

    reference, data = cast
    assert reference.checkpoint is None and reference.run_id is None, reference
    result = _checked(tmp_path, data, reference)
    assert result["drifted"], result["checks"]
    assert "embedding_mmd" not in {c["check"] for c in result["checks"]}, "embeddings off"
    tracking = tracking_db(tmp_path)
    run = MlflowClient(tracking).get_run(result["mlflow_run_id"])
    assert run.data.tags["skin.stage"] == "check-drift", run.data.tags
    assert run.data.metrics["drift_red_p"] < 0.01, run.data.metrics
    assert run.data.params["reference"] == reference.label
    assert run.data.tags["skin.drift.unit"] == result["unit"], run.data.tags
    assert run.data.metrics["drift_reference_groups"] == result["groups_reference"] > 0
    files = {a.path for a in MlflowClient(tracking).list_artifacts(run.info.run_id, "drift")}
    assert files == {f"drift/drift_report.{x}" for x in ("csv", "png", "md")}, files
    experiment = MlflowClient(tracking).get_experiment(run.info.experiment_id).name
    assert experiment == drift_experiment(tiny_config(tmp_path, data).tracking.experiment)
    assert experiment.endswith("-drift"), "drift checks stay out of the training runs' table"


def test_another_backbone_writes_its_own_report_folder(tmp_path: Path, cast) -> None:
    """The report folder is keyed like the cache: listing, reference and the drift and model
    settings, so a check with another backbone never overwrites the first one's report."""
    reference, data = cast
    small = {"drift.sample": 40, "drift.permutations": 1000}  # the folder is what is asked
    first = _checked(tmp_path, data, reference, **small)
    again = _checked(tmp_path, data, reference, **small)
    other = _checked(tmp_path, data, reference, **small, **{"model.name": "resnet18"})
    folders = [Path(r["files"]["table"]).parent for r in (first, again, other)]
    assert folders[0] == folders[1], "the same check writes the same folder"
    assert folders[0] != folders[2], "another backbone: another folder"
    assert all(f.parent == Path(tmp_path / "work" / "drift") for f in folders), folders
    assert first["mlflow_run_id"] != again["mlflow_run_id"], "each check is its own run"
