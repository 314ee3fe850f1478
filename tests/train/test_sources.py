"""Whether pretrained weights can be had, asked before any data stage (and without torch)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest
import safetensors.torch
import torch

from skin.train.sources import PACKAGE_MODEL, PACKAGE_SPEC, WeightsError, check_available


def test_the_check_imports_no_torch() -> None:
    """The preflight runs on every pipeline run, cached ones included: it must stay light."""
    code = "import sys, skin.train.sources; print('torch' in sys.modules, 'timm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"], out.stdout


@pytest.fixture
def no_hub(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty hub cache and a hub that does not answer (a closed loopback port)."""
    from huggingface_hub import constants

    from tests.servers import free_port

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def test_weights_that_can_be_had_pass_the_check(tmp_path: pathlib.Path, no_hub: None) -> None:
    check_available("resnet10t", pretrained=False, weights=None)
    check_available(PACKAGE_MODEL, pretrained=True, weights=PACKAGE_SPEC)
    file = tmp_path / "w.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(1)}, str(file))
    check_available("resnet10t", pretrained=True, weights=str(file))


def test_weights_that_cannot_be_had_fail_the_check_naming_the_fix(
    tmp_path: pathlib.Path, no_hub: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(WeightsError, match=r"model\.weights .*missing\.pth: no such file"):
        check_available("resnet10t", pretrained=True, weights=str(tmp_path / "missing.pth"))
    with pytest.raises(WeightsError) as err:
        check_available("resnet10t", pretrained=True, weights=None)
    text = str(err.value)
    assert "cannot be reached" in text and "model.pretrained false" in text, text
    assert "model.weights" in text and "configs/demo.yaml" in text, text
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match="HF_HUB_OFFLINE is set"):
        check_available("resnet10t", pretrained=True, weights=None)
