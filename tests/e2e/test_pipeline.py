"""The Prefect pipeline end to end against a real MLflow server: metrics, artifacts, incremental runs."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from skin.data import manifest as mf
from skin.data.sample_data import write_sample_dataset
from tests.recipes import TINY

pytestmark = [pytest.mark.slow, pytest.mark.server]

FINAL = [
    "train_accuracy",
    "dev_accuracy",
    "test_accuracy",
    "train_balanced_accuracy",
    "dev_balanced_accuracy",
    "test_balanced_accuracy",
    "bias",
    "variance",
    "variance_test",
]

INTERVALS = [
    "test_balanced_accuracy_ci_low",
    "test_balanced_accuracy_ci_high",
    "dev_balanced_accuracy_ci_low",
    "test_recall_MEL_ci_low",
    "temperature",
    "test_ece_calibrated",
    "test_mel_sensitivity_at_spec90",
    "mel_threshold_at_spec90",
]


def overrides(tmp_path: Path, server_url: str, **extra: object) -> dict[str, object]:
    return {
        **TINY,
        "train.epochs": 10,
        "work_dir": str(tmp_path / "work"),
        "tracking.tracking_uri": server_url,
        "tracking.experiment": f"test-{uuid.uuid4().hex[:8]}",
        "tracking.registered_model": f"skin-test-{uuid.uuid4().hex[:8]}",
        **extra,
    }


def artifact_paths(client: MlflowClient, run_id: str, path: str = "") -> set[str]:
    out: set[str] = set()
    for item in client.list_artifacts(run_id, path):
        if item.is_dir:
            out |= artifact_paths(client, run_id, item.path)
        else:
            out.add(item.path)
    return out


def assert_gate_followed(
    client: MlflowClient, reg: dict, gate: str, min_improvement: float
) -> None:
    """The alias is what the configured gate's rule says of the evidence recorded beside it."""
    tags = client.get_model_version(reg["name"], reg["version"]).tags
    if gate == "paired":
        low = float(tags["gate.difference_ci"].strip("[]").split(",")[0])
        expected = "champion" if low > min_improvement else "challenger"
        assert reg["reason"].startswith("paired on"), reg["reason"]
    else:
        expected = "champion" if reg["score"] > reg["champion_score"] else "challenger"
        assert "gate.difference" not in tags, "the point gate records no paired evidence"
    assert reg["alias"] == expected, (gate, reg, tags)


def test_pipeline_tracks_everything_and_reruns_incrementally(
    tmp_path: Path, sample_data: Path, mlflow_server, prefect_api
) -> None:
    from flows.pipeline import pipeline_flow

    data = tmp_path / "data"
    shutil.copytree(sample_data, data)
    ov = overrides(tmp_path, mlflow_server.url)
    first = pipeline_flow(data_uri=str(data), overrides=ov)
    assert set(first["stages"].values()) == {"ran"}, first["stages"]

    client = MlflowClient(tracking_uri=mlflow_server.url)
    run = client.get_run(first["run_id"])
    m = run.data.metrics
    missing = [k for k in [*FINAL, *INTERVALS, "test_recall_MEL", "dev_recall_NV"] if k not in m]
    assert not missing, f"final metrics missing: {missing}"
    assert m["bias"] + m["train_accuracy"] == pytest.approx(0.90), "bias = human level − train"
    assert m["variance"] == pytest.approx(m["train_accuracy"] - m["dev_accuracy"])
    assert m["test_balanced_accuracy"] > 0.3, f"the model must learn: {m['test_balanced_accuracy']}"
    low, high = m["test_balanced_accuracy_ci_low"], m["test_balanced_accuracy_ci_high"]
    assert low <= m["test_balanced_accuracy"] <= high, ("interval around the value", low, high)
    for name in (
        "epoch/train_loss",
        "epoch/dev_loss",
        "epoch/dev_accuracy",
        "epoch/dev_balanced_accuracy",
    ):
        steps = [p.step for p in client.get_metric_history(run.info.run_id, name)]
        assert sorted(steps) == list(range(1, 11)), f"{name} per epoch: {steps}"
    assert run.data.params["model.name"] == "test_resnet", "flattened config as params"
    assert run.data.tags["manifest_hash"] == first["manifest_hash"], "dataset version tagged"
    assert "prefect.flow_run_id" in run.data.tags, "the MLflow run links to its flow run"
    files = artifact_paths(client, run.info.run_id)
    expected = {f"checkpoints/epoch_{e:04d}.pt" for e in range(1, 11)} | {
        "manifest/manifest.parquet",
        "config/config.yaml",
        "report/confusion_matrix_test.csv",
        "report/confusion_matrix_test.png",
        "report/per_class_test.csv",
        "report/summary.md",
        "report/predictions_dev.parquet",
        "report/calibration.json",
        "report/operating_points.json",
        "report/abstention.json",
    }
    assert expected <= files, f"artifacts missing: {sorted(expected - files)}"
    models = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id], output_format="list"
    )
    assert any(lm.source_run_id == run.info.run_id for lm in models), "model logged to MLflow"
    assert run.info.status == "FINISHED"
    assert "balanced_accuracy" in run.data.tags.get("mlflow.note.content", ""), "run described"
    contexts = {
        t.value for i in run.inputs.dataset_inputs for t in i.tags if t.key == "mlflow.data.context"
    }
    assert contexts == {"train", "dev", "test"}, f"manifest as dataset inputs: {contexts}"

    again = pipeline_flow(data_uri=str(data), overrides=ov)
    assert again["stages"] == {
        "list-images": "ran",
        "audit": "cached",  # the listing's content is unchanged
        "split": "cached",
        "undersample": "cached",
        "check-drift": "ran",  # first, now that there is a champion (retrain.check_drift)
        "prepare-images": "cached",
        "train": "cached",
        "evaluate": "cached",
        "register-model": "cached",
    }, again["stages"]
    assert again["run_id"] == first["run_id"], "nothing changed: the same run is the answer"
    assert "fewer than drift.min_images" in again["drift"]["verdict"], "no new image to test"

    lr = pipeline_flow(data_uri=str(data), overrides={**ov, "train.lr": 0.002})
    assert lr["stages"] == {
        "list-images": "ran",
        "audit": "cached",  # the listing's content is unchanged
        "split": "cached",
        "undersample": "cached",
        "check-drift": "cached",
        "prepare-images": "cached",
        "train": "ran",
        "evaluate": "ran",
        "register-model": "ran",
    }, lr
    assert lr["run_id"] != first["run_id"], "a new training is a new MLflow run"

    # The promotion gate: the first model is champion; the retrain follows the configured gate's
    # own recorded evidence, whichever way its score falls on this machine's arithmetic.
    reg1, reg2 = first["registration"], lr["registration"]
    assert reg1["alias"] == "champion" and reg1["champion_score"] is None, reg1
    assert_gate_followed(client, reg2, gate="paired", min_improvement=0.0)
    point = pipeline_flow(
        data_uri=str(data), overrides={**ov, "train.lr": 0.004, "registry.gate": "point"}
    )
    reg3 = point["registration"]  # a third training, against whichever model is champion now
    assert reg3["created"], "new weights are a new version (identical ones are not: test_registry)"
    assert_gate_followed(client, reg3, gate="point", min_improvement=0.0)
    champion = client.get_model_version_by_alias(reg1["name"], "champion")
    promoted = [r["version"] for r in (reg1, reg2, reg3) if r["alias"] == "champion"]
    assert champion.version == promoted[-1], (champion, reg1, reg2, reg3)

    write_sample_dataset(str(data), {"NV": 8, "MEL": 4}, size=40, seed=99)
    grown = pipeline_flow(data_uri=str(data), overrides=ov)
    assert all(v == "ran" for v in grown["stages"].values()), grown["stages"]
    old = mf.read(first["manifest_uri"]).set_index("key")["split"]
    new = mf.read(grown["manifest_uri"]).set_index("key")["split"]
    assert len(new) == len(old) + 12, "the new images are in the new manifest"
    assert new.loc[old.index].equals(old), "images already assigned keep their split"

    forced = pipeline_flow(data_uri=str(data), overrides=ov, refresh=True)
    assert all(v == "ran" for v in forced["stages"].values()), forced["stages"]


def test_pipeline_publishes_a_markdown_summary(
    tmp_path: Path, sample_data: Path, mlflow_server, prefect_api
) -> None:
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.pipeline import pipeline_flow

    result = pipeline_flow(
        data_uri=str(sample_data),
        overrides=overrides(tmp_path, mlflow_server.url, **{"train.epochs": 2}),
    )

    async def latest() -> list:
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["skin-run-summary"])),
            )

    artifacts = asyncio.run(latest())
    texts = [a.data for a in artifacts if result["run_id"] in str(a.data)]
    assert texts, "a markdown artifact names the MLflow run"
    assert "balanced_accuracy" in texts[0] and "bias" in texts[0], texts[0][:300]
    assert mlflow_server.url in texts[0], "it links to the MLflow UI"
    assert pd.notna(result["metrics"]["test_accuracy"])
