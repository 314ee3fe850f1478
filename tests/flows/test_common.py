"""What every flow shares: one config boundary (file ← overrides ← data URI, checked reachable
before any work; weights that cannot be had stop a training flow before its data stages),
manifests by reference, and `call`, which notes whether a task ran or was cached and says so."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest
from huggingface_hub import constants
from prefect import flow, task
from prefect.cache_policies import INPUTS

from flows.common import cached_note, call, flow_config, resolve_config, resolve_manifest
from flows.stages import train_flow
from skin.data.sample_data import write_sample_dataset
from skin.data.stages import manifest_ref
from skin.data.synthetic import class_counts
from skin.track.tracking import TrackingError
from skin.train.weights import WeightsError
from tests.helpers import make_manifest, tiny_config
from tests.recipes import TINY
from tests.servers import free_port


@pytest.mark.server
def test_weights_that_cannot_be_had_stop_a_training_flow_before_its_data_stages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_api: None
) -> None:
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    data, work = tmp_path / "data", tmp_path / "work"
    write_sample_dataset(str(data), class_counts(per_class=2), size=16, seed=0, layout="isic")
    overrides = {**TINY, "model.name": "resnet10t", "model.pretrained": True,
                 "work_dir": str(work), "tracking.tracking_uri": f"sqlite:///{tmp_path}/m.db"}  # fmt: skip
    with pytest.raises(WeightsError, match=r"resnet10t with model\.pretrained"):
        train_flow(data_uri=str(data), overrides=overrides)
    assert not work.exists(), "nothing listed, split or decoded before the weights were checked"


@pytest.mark.server
def test_a_stage_from_the_cache_says_so_and_how_to_run_it_again(
    prefect_api: None, caplog: pytest.LogCaptureFixture
) -> None:
    key = f"k-{uuid.uuid4().hex}"

    @task(name="stage-x", cache_key_fn=lambda *_: key, persist_result=True)
    def stage(x: int) -> int:
        return x + 1

    @flow
    def twice() -> list[dict[str, str]]:
        seen = []
        for _ in range(2):
            stages: dict[str, str] = {}
            call(stage, stages, x=1)
            seen.append(stages)
        return seen

    run_logger = logging.getLogger("prefect.flow_runs")  # its level and propagation are Prefect's
    run_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="prefect.flow_runs"):
            first, second = twice()
    finally:
        run_logger.removeHandler(caplog.handler)
    assert (first, second) == ({"stage-x": "ran"}, {"stage-x": "cached"})
    records = {id(r): r for r in caplog.records}.values()  # one record, whichever way it came
    said = [r.getMessage() for r in records if "came from the cache" in r.getMessage()]
    assert len(said) == 1 and "stage-x" in said[0] and "refresh=true" in said[0], said
    assert cached_note(first) is None
    assert "stage-x" in (cached_note(second) or "") and "refresh=true" in (
        cached_note(second) or ""
    )


def test_the_config_is_the_file_then_the_overrides_then_the_data_uri(tmp_path: Path) -> None:
    path = tmp_path / "skin.yaml"
    path.write_text("data:\n  uri: from-file\ntrain:\n  epochs: 5\n  lr: 0.5\n")
    cfg = resolve_config(str(path), {"train.epochs": 7, "data.uri": "from-overrides"}, None)
    assert (cfg.data.uri, cfg.train.epochs, cfg.train.lr) == ("from-overrides", 7, 0.5), cfg.train
    assert resolve_config(str(path), {"data.uri": "x"}, "given").data.uri == "given"
    assert resolve_config(str(path), None, None).data.uri == "from-file"


def test_an_unknown_setting_is_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"train\.epoch"):
        flow_config(None, {"train.epoch": 3}, str(tmp_path), tracking=False)


def test_an_unreachable_tracking_server_is_refused_before_any_work(tmp_path: Path) -> None:
    overrides = {"tracking.tracking_uri": "http://127.0.0.1:9"}  # the discard port: nobody
    with pytest.raises(TrackingError, match=r"127\.0\.0\.1:9 is unreachable"):
        flow_config(None, overrides, str(tmp_path))
    cfg = flow_config(None, overrides, str(tmp_path), tracking=False)  # a stage without MLflow
    assert cfg.tracking.tracking_uri == "http://127.0.0.1:9"


def test_a_manifest_is_latest_or_a_file(tmp_path: Path, sample_data: Path) -> None:
    cfg = tiny_config(tmp_path, sample_data)
    with pytest.raises(ValueError, match="run the split stage first"):
        resolve_manifest("latest", cfg)
    uri, _ = make_manifest(tmp_path, sample_data)
    assert resolve_manifest(uri, cfg) == manifest_ref(uri), "a file: keyed on its content"


@task(name="double", cache_policy=INPUTS, persist_result=True)
def double(x: int) -> int:
    return 2 * x


@flow
def called(x: int, refresh: bool = False) -> tuple[int, dict[str, str]]:
    stages: dict[str, str] = {}
    return call(double, stages, refresh=refresh, x=x), stages


@pytest.mark.server
def test_call_notes_whether_a_task_ran_or_was_cached(prefect_api) -> None:
    x = uuid.uuid4().int % 10**9  # a key no earlier run cached
    assert called(x) == (2 * x, {"double": "ran"})
    assert called(x) == (2 * x, {"double": "cached"}), "the same inputs: the cached result"
    assert called(x, refresh=True) == (2 * x, {"double": "ran"}), "refresh runs it again"
