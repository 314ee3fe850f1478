"""What every flow shares: the preflight that fails before any stage runs, and cached stages that say so."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest
from huggingface_hub import constants
from prefect import flow, task

from flows.common import cached_note, call
from flows.stages import train_flow
from skin.data.sample_data import write_sample_dataset
from skin.data.synthetic import class_counts
from skin.train.weights import WeightsError
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

    with caplog.at_level(logging.INFO):
        first, second = twice()
    assert (first, second) == ({"stage-x": "ran"}, {"stage-x": "cached"})
    said = [r.getMessage() for r in caplog.records if "came from the cache" in r.getMessage()]
    assert len(said) == 1 and "stage-x" in said[0] and "refresh=true" in said[0], said
    assert cached_note(first) is None
    assert "stage-x" in (cached_note(second) or "") and "refresh=true" in (
        cached_note(second) or ""
    )
