"""The command line's contract with the config file: flags given override it, flags not given don't."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

from flows.outcomes import EvaluateResult, FlowResult, PipelineResult, ShardsResult, TrainResult
from skin.base.config import load_config
from skin.cli import app
from skin.data import manifest as mf

runner = CliRunner()
FILE_SPLIT = "split:\n  seed: 7\n  fractions: [0.6, 0.2, 0.2]\n  balance: none\n"
FINETUNE = str(Path(__file__).parents[2] / "configs" / "finetune.yaml")


def invoke(*args: str, code: int = 0) -> str:
    """Run `skin ARGS`; check its exit code; stdout with --json, else all output on one line."""
    result = runner.invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.stdout if "--json" in args else " ".join(result.output.split())


def _config(folder: Path, text: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cfg.yaml"
    path.write_text(f"work_dir: {folder / 'work'}\n{text}")
    return path


@pytest.fixture(scope="module")
def unbalanced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """NV three times the size of every other class, so undersampling has something to drop."""
    from skin.base.labels import CLASSES
    from skin.data.sample_data import write_sample_dataset

    root = tmp_path_factory.mktemp("unbalanced") / "data"
    counts = {c: 48 if c == "NV" else 16 for c in CLASSES}
    write_sample_dataset(str(root), counts, size=24, seed=2)
    return root


def _split(data: Path, config: Path, *flags: str) -> pd.DataFrame:
    """`skin split` into a fresh manifest; its rows by key."""
    out = config.parent / f"manifest-{len(list(config.parent.glob('manifest-*')))}.parquet"
    invoke("split", "--data", str(data), "--out", str(out), "--config", str(config), *flags)
    return mf.read(str(out)).set_index("key").sort_index()[["label", "split", "keep"]]


@pytest.mark.server
def test_split_takes_seed_fractions_and_balance_from_the_config_file(
    tmp_path: Path, unbalanced: Path, prefect_api
) -> None:
    from_file = _split(unbalanced, _config(tmp_path / "file", FILE_SPLIT))
    from_flags = _split(
        unbalanced,
        _config(tmp_path / "flags"),
        *("--seed", "7", "--fractions", "0.6,0.2,0.2", "--balance", "none"),
    )
    pd.testing.assert_frame_equal(from_file, from_flags, obj="file settings vs the same flags")
    assert from_file["keep"].all(), "balance: none keeps every train image"
    share = (from_file["split"] == "test").mean()
    assert 0.15 < share < 0.25, f"the file's fractions put 20 % in test, not {share:.0%}"


@pytest.mark.server
def test_split_flags_given_override_the_config_file(
    tmp_path: Path, unbalanced: Path, prefect_api
) -> None:
    flagged = _split(
        unbalanced,
        _config(tmp_path / "file", FILE_SPLIT),
        *("--seed", "3", "--balance", "undersample"),
    )
    expected = _split(
        unbalanced,
        _config(tmp_path / "flags"),
        *("--seed", "3", "--fractions", "0.6,0.2,0.2", "--balance", "undersample"),
    )
    pd.testing.assert_frame_equal(flagged, expected, obj="flags win, the file fills the rest")
    assert not flagged["keep"].all(), "--balance undersample beat the file's none"


@pytest.mark.server
def test_list_takes_the_layout_from_the_config_file(tmp_path: Path, prefect_api) -> None:
    data = tmp_path / "isic"
    invoke("sample-data", str(data), "--total", "60", "--layout", "isic", "--size", "24")
    config = _config(tmp_path, "data:\n  layout: folders\n")
    out = invoke("list", "--data", str(data), "--config", str(config), code=1)
    assert "no labelled images" in out and "layout folders" in out, out
    listed = json.loads(
        invoke("--json", "list", "--data", str(data), "--config", str(config), "--layout", "auto")
    )
    assert listed["layout"] == "isic" and sum(listed["counts"].values()) == 60, listed


def _capture(monkeypatch: pytest.MonkeyPatch, target: str, result: FlowResult) -> list[dict]:
    """Replace a flow by one that records its keyword arguments and returns `result`."""
    calls: list[dict[str, Any]] = []

    def fake(**kwargs: Any) -> FlowResult:
        calls.append(kwargs)
        return result

    monkeypatch.setattr(target, fake)
    return calls


def _metrics() -> dict[str, float]:
    metrics = {f"{s}_balanced_accuracy": 0.5 for s in ("train", "dev", "test")}
    return metrics | {"bias": 0.5, "variance": 0.0, "variance_test": 0.0}


def _run_result(report_dir: Path) -> PipelineResult:
    return PipelineResult(run_id="r1", skipped={}, bad_images=0, registration=None,
                          mlflow_url=None, manifest_uri="m.parquet", manifest_hash="h",
                          best_epoch=1, metrics=_metrics(), diagnosis="high bias",
                          report_dir=str(report_dir), stages={"train": "ran"}, retrained=True,
                          reason="retrain.when is always")  # fmt: skip


def _evaluate_result(report_dir: Path) -> EvaluateResult:
    return EvaluateResult("r1", _metrics(), "high bias", str(report_dir), stages={"train": "ran"})


@pytest.mark.parametrize(
    ("flags", "tta"),
    [([], True), (["--tta"], True), (["--no-tta"], False)],
)
def test_evaluate_keeps_the_config_tta_unless_a_flag_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: list[str], tta: bool
) -> None:
    calls = _capture(monkeypatch, "flows.stages.evaluate_flow", _evaluate_result(tmp_path))
    invoke("evaluate", "--run-id", "r1", "--config", FINETUNE, *flags)
    overrides = calls[0]["overrides"]
    assert load_config(FINETUNE, overrides).evaluate.tta is tta, overrides


def test_run_and_train_pass_only_the_flags_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flags = ("--epochs", "3", "--no-pretrained", "--freeze", "head", "--seed", "5")
    expected = {
        "train.epochs": 3,
        "model.pretrained": False,
        "model.freeze": "head",
        "train.seed": 5,
    }
    runs = _capture(monkeypatch, "flows.pipeline.pipeline_flow", _run_result(tmp_path))
    invoke("run", "--data", str(tmp_path), *flags)
    assert runs[0]["overrides"] == expected, runs
    train = TrainResult("r1", "runs/r1", "x.pt", 1, 3, None, False, False, 0, [])
    trains = _capture(monkeypatch, "flows.stages.train_flow", train)
    invoke("train", "--data", str(tmp_path), *flags, "--stream")
    assert trains[0]["overrides"] == expected | {"shared.stream": True}, trains


def test_prepare_passes_its_shared_prefix_and_only_the_flags_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = ShardsResult("s3://b/p", 1, 1, 0, 0, 10)
    calls = _capture(monkeypatch, "flows.prepare.build_shards_flow", result)
    invoke("prepare", "--shared", "s3://b/p", "--data", str(tmp_path), "--image-size", "64")
    assert calls[0]["overrides"] == {"shared.uri": "s3://b/p", "train.image_size": 64}, calls


@pytest.fixture
def demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], str]:
    """`skin demo` on existing data with a stand-in pipeline: returns its output."""
    (tmp_path / "data").mkdir()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    _capture(monkeypatch, "flows.pipeline.pipeline_flow", _run_result(tmp_path))

    def run(config_text: str = "") -> str:
        config = _config(tmp_path, config_text)
        return invoke("demo", "--dest", str(tmp_path / "data"), "--config", str(config))

    return run


def test_demo_points_at_the_tracking_uri_from_the_environment(
    demo: Callable[[str], str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert "sqlite:///mlflow.db" in demo(""), "neither set: the demo's default"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    out = demo("")
    assert "env.db" in out and "sqlite:///mlflow.db" not in out, out
    out = demo("tracking:\n  tracking_uri: sqlite:///cfg.db\n")
    assert "cfg.db" in out and "env.db" not in out, "the config's tracking_uri comes first"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5055")
    out = demo("")
    assert "http://127.0.0.1:5055" in out and "backend-store-uri" not in out, out


@pytest.mark.parametrize(
    "args",
    [
        ("predict", "lesion.jpg", "--model", "models:/just-a-name"),
        ("export", "model.onnx", "--model", "runs:/"),
        ("drift", "--data", "demo/data", "--against", "gs://bucket/manifest.parquet"),
        ("ensemble", "--runs", "models:/a@champion,models:/b/latest"),
    ],
)
def test_a_malformed_model_reference_fails_before_any_work(
    args: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _capture(monkeypatch, "flows.cv.ensemble_flow", ShardsResult("", 0, 0, 0, 0, 0))
    calls += _capture(monkeypatch, "flows.drift.check_drift_flow", ShardsResult("", 0, 0, 0, 0, 0))
    out = invoke(*args, code=1)
    assert "ModelRefError" in out and "models:/NAME@ALIAS" in out, out
    assert not calls, "no flow ran"
