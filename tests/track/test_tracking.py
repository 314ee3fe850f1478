"""The tracking seam: the run lifecycle, the registry client, model references and secrets."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from skin.track.refs import ModelRefError
from skin.track.tracking import (
    MissingRecordError,
    NullTracker,
    TrackingError,
    resolve_tracking_uri,
    scrub,
    sha256_file,
    tracked_run,
)
from tests.helpers import tracking_db


class Recorder(NullTracker):
    """Records how the run was closed; can fail to close, as a vanished server does."""

    def __init__(self, fail_close: bool = False) -> None:
        super().__init__("run-1")
        self.closed: list[str] = []
        self.fail_close = fail_close

    def close(self, status: str = "FINISHED") -> None:
        if self.fail_close:
            raise ConnectionError("tracking server gone")
        self.closed.append(status)


def test_a_tracked_run_ends_finished_when_its_work_succeeds() -> None:
    tracker = Recorder()
    with tracked_run(tracker) as run:
        run.log_metrics({"loss": 1.0})
    assert tracker.closed == ["FINISHED"], tracker.closed


@pytest.mark.parametrize("error", [ValueError("bad batch"), KeyboardInterrupt()])
def test_a_tracked_run_ends_failed_and_reraises_the_error(error: BaseException) -> None:
    tracker = Recorder()
    with pytest.raises(type(error)), tracked_run(tracker):
        raise error
    assert tracker.closed == ["FAILED"], "marked failed once, not finished"


def test_a_vanished_server_does_not_mask_the_real_error(caplog: pytest.LogCaptureFixture) -> None:
    tracker = Recorder(fail_close=True)
    with (
        caplog.at_level(logging.WARNING),
        pytest.raises(ValueError, match="bad batch"),
        tracked_run(tracker),
    ):
        raise ValueError("bad batch")
    assert "could not mark run run-1 FAILED" in caplog.text, caplog.text
    assert "tracking server gone" in caplog.text, caplog.text


def test_the_tracking_uri_comes_from_config_then_environment_then_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert resolve_tracking_uri("http://cfg:5000") == "http://cfg:5000"
    assert resolve_tracking_uri(None) == "http://env:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert resolve_tracking_uri(None) == "sqlite:///mlflow.db"


def test_secrets_never_become_params() -> None:
    kept = scrub({"s3.secret_access_key": "x", "aws_key_id": "y", "train.lr": "0.1"})
    assert kept == {"train.lr": "0.1"}, kept


def test_sha256_names_the_content(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"weights")
    b.write_bytes(b"weights")
    assert sha256_file(a) == sha256_file(b)
    b.write_bytes(b"other weights")
    assert sha256_file(a) != sha256_file(b)


def test_skin_does_not_import_mlflow_on_import() -> None:
    """Every core module (all but skin.serve.pyfunc, an MLflow PythonModel by design, the model's
    code skin.serve.skin_model, and skin.cli.__main__, which runs the CLI) imports without MLflow
    or Prefect, so the library runs alone on a GPU box."""
    code = (
        "import importlib, pkgutil, sys, skin; "
        "names = [m.name for m in pkgutil.walk_packages(skin.__path__, 'skin.')"
        " if m.name not in ('skin.serve.pyfunc', 'skin.serve.skin_model', 'skin.serving',"
        " 'skin.cli.__main__')]; "
        "[importlib.import_module(n) for n in names]; "
        "print(len(names), 'mlflow' in sys.modules, 'prefect' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    count, mlflow, prefect = out.stdout.split()
    assert int(count) > 40, f"only {count} modules imported"
    assert (mlflow, prefect) == ("False", "False"), f"imported at import time: {out.stdout}"


# --------------------------------------------------------------------------- a real registry


@pytest.fixture
def registry(tmp_path: Path):
    from skin.track.tracking import MLflowRegistry

    return MLflowRegistry(tracking_db(tmp_path))


def test_a_collected_run_is_a_missing_record_not_a_crash(registry) -> None:
    with pytest.raises(MissingRecordError, match="is gone"):
        registry.metric("0" * 32, "dev_balanced_accuracy")
    with pytest.raises(MissingRecordError, match="no source run"):
        registry.metric(None, "dev_balanced_accuracy")


def test_a_missing_alias_is_no_version(registry) -> None:
    assert registry.by_alias("never-registered", "champion") is None
    registry.client.create_registered_model("empty")
    assert registry.by_alias("empty", "champion") is None


@pytest.mark.parametrize(
    ("ref", "error", "why"),
    [
        (
            "models:/never-registered@champion",
            TrackingError,
            "cannot load models:/never-registered@champion",
        ),
        ("models:/just-a-name", ModelRefError, "expected models:/NAME@ALIAS"),
        ("runs:/", ModelRefError, "expected runs:/RUN_ID/model"),
    ],
)
def test_an_unusable_model_reference_is_named(registry, tmp_path: Path, ref, error, why) -> None:
    with pytest.raises(error, match=why):
        registry.checkpoint(ref, tmp_path)


def test_the_data_version_is_a_dataset_input_and_the_summary_a_description(tmp_path: Path) -> None:
    import pandas as pd
    from mlflow import MlflowClient

    from skin.track.tracking import MLflowTracker

    uri = tracking_db(tmp_path)
    tracker = MLflowTracker(uri, "datasets")
    frame = pd.DataFrame({"key": ["a.jpg", "b.jpg"], "label": ["MEL", "NV"]})
    tracker.log_dataset(frame, "s3://bucket/isic", "abc123", "test")
    tracker.set_description("# skin run\nbalanced accuracy 0.71")
    tracker.close()
    run = MlflowClient(tracking_uri=uri).get_run(tracker.run_id)
    (inp,) = run.inputs.dataset_inputs
    assert (inp.dataset.name, inp.dataset.digest) == ("s3://bucket/isic", "abc123")
    assert {t.key: t.value for t in inp.tags}["mlflow.data.context"] == "test"
    assert run.data.tags["mlflow.note.content"].startswith("# skin run")


def test_a_dataset_input_leaves_no_mlflow_warning_in_the_worker_log(tmp_path: Path) -> None:
    import warnings

    import pandas as pd

    from skin.track.tracking import DATASET_NOISE, MLflowTracker

    tracker = MLflowTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "datasets")
    frame = pd.DataFrame({"key": ["a.jpg", "b.jpg"], "label": ["MEL", "NV"], "age": [40, 55]})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tracker.log_dataset(frame, f"{tmp_path / 'data'} [train]", "abc123", "train")
    tracker.close()
    said = [str(w.message) for w in caught]
    assert not [s for s in said if s.startswith(DATASET_NOISE)], said
