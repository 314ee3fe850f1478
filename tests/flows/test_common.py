"""What every flow shares: the preflight that fails before any stage runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from skin.data.sample_data import write_sample_dataset
from skin.data.synthetic import class_counts
from skin.train.weights import WeightsError
from tests.recipes import TINY
from tests.servers import free_port


@pytest.mark.server
def test_weights_that_cannot_be_had_stop_a_training_flow_before_its_data_stages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_api: None
) -> None:
    from huggingface_hub import constants

    from flows.stages import train_flow

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
