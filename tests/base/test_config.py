"""Configuration: notebook defaults, strict validation, and bad settings failing before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from skin.base.config import ConfigError, PipelineConfig, flatten, load_config
from skin.cli import app
from tests.servers import free_port

REPO = Path(__file__).resolve().parents[2]


def test_defaults_reproduce_the_notebook() -> None:
    cfg = PipelineConfig()
    assert (cfg.model.name, cfg.model.pretrained, cfg.model.freeze) == ("tf_mixnet_s", True, "head")
    assert (cfg.train.optimizer, cfg.train.lr, cfg.train.batch_size, cfg.train.epochs) == (
        "adam",
        1e-3,
        128,
        50,
    )
    assert cfg.split.fractions == (0.8, 0.1, 0.1) and cfg.split.balance == "undersample"
    assert cfg.split.majority_class == "NV" and cfg.evaluate.human_level == 0.90
    assert cfg.tracking.experiment == "skin-lesion"
    assert not cfg.train.augment.enabled, "the notebook did not augment"


@pytest.mark.parametrize("preset", ["notebook", "finetune", "demo"])
def test_presets_load(preset: str) -> None:
    cfg = load_config(REPO / "configs" / f"{preset}.yaml")
    assert isinstance(cfg, PipelineConfig)
    assert len(flatten(cfg)) > 30, "the flattened config becomes MLflow params"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"model.name": "resnet_does_not_exist"}, "model.name"),
        ({"train.epochs": -1}, "train.epochs"),
        ({"split.fractions": [0.7, 0.1, 0.1]}, "split.fractions"),
        ({"model.freeze": "some"}, "model.freeze"),
        ({"train.unknown_knob": 1}, "train.unknown_knob"),
        ({"split.majority_class": "XYZ"}, "majority_class"),
    ],
)
def test_bad_settings_name_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(None, overrides)


def test_config_is_frozen_and_files_must_exist(tmp_path: Path) -> None:
    cfg = PipelineConfig()
    with pytest.raises(Exception, match="frozen"):
        cfg.train.epochs = 3  # type: ignore[misc]
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "nope_net"], "model.name"),
        (["--epochs", "-3"], "train.epochs"),
        (["--freeze", "half"], "model.freeze"),
    ],
)
def test_cli_fails_fast_on_bad_settings(tmp_path: Path, args: list[str], message: str) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"work_dir: {tmp_path / 'work'}\n")
    result = CliRunner().invoke(app, ["run", "--data", str(tmp_path), "--config", str(cfg), *args])
    assert result.exit_code == 1, result.output
    assert message in result.output, result.output
    assert not (tmp_path / "work").exists(), "a bad setting is caught before any work starts"


@pytest.mark.server
def test_unreachable_s3_endpoint_fails_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_api
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"work_dir: {tmp_path / 'work'}\n")
    result = CliRunner().invoke(app, ["list", "--data", "s3://nowhere/isic", "--config", str(cfg)])
    assert result.exit_code == 1, result.output
    assert "cannot reach bucket 'nowhere'" in result.output and "AWS_ENDPOINT_URL" in result.output
    assert not (tmp_path / "work").exists(), "nothing was written"


def test_packaged_weights_of_another_architecture_are_refused_naming_the_fix() -> None:
    demo = REPO / "configs" / "demo.yaml"
    with pytest.raises(ConfigError) as err:
        load_config(demo, {"model.name": "tf_mixnet_s"})
    text = str(err.value)
    assert "model.weights" in text and "tf_efficientnet_lite0" in text, text
    assert "model.weights: null" in text, f"the message must say how to clear them: {text}"
    with pytest.raises(ConfigError, match="no such packaged weights"):
        load_config(None, {"model.weights": "package:resnet-weights"})


def test_a_null_override_clears_the_field_instead_of_being_dropped() -> None:
    demo = REPO / "configs" / "demo.yaml"
    cfg = load_config(demo, {"model.name": "tf_mixnet_s", "model.weights": None})
    assert (cfg.model.name, cfg.model.weights) == ("tf_mixnet_s", None)
    nested = load_config(demo, {"model": {"weights": None}, "split.majority_class": None})
    assert nested.model.weights is None and nested.split.majority_class is None, (
        "null clears a field whose default is not null too"
    )


def test_a_null_override_of_a_field_that_cannot_be_empty_is_refused_not_dropped() -> None:
    with pytest.raises(ConfigError, match=r"train\.epochs.*null clears only"):
        load_config(None, {"train.epochs": None})
