"""Offline pretrained weights: the package's ImageNet file, safe loading, fitting to timm."""

from __future__ import annotations

import pathlib
import pickle

import pytest
import safetensors.torch
import timm
import timm.data
import torch
from PIL import Image
from skimage import data as skdata

from skin.train.weights import (
    PACKAGE_MODEL,
    PACKAGE_SPEC,
    WeightsError,
    apply_weights,
    efficientnet_lite0_package_state_dict,
    load_weights_file,
    package_weights_path,
)

CATS = {281, 282, 283, 285}  # tabby, tiger cat, Persian, Egyptian cat
COFFEE = {967, 968}  # espresso, cup


@pytest.fixture(scope="module")
def package_sd() -> dict[str, torch.Tensor]:
    return efficientnet_lite0_package_state_dict()


@pytest.fixture(scope="module")
def imagenet_model(package_sd: dict[str, torch.Tensor]) -> torch.nn.Module:
    model = timm.create_model(PACKAGE_MODEL, pretrained=False)
    result = model.load_state_dict(package_sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys, f"strict load: {result}"
    return model.eval()


def _top3(model: torch.nn.Module, image: Image.Image) -> list[tuple[int, float]]:
    cfg = timm.data.resolve_data_config({}, model=model)
    x = timm.data.create_transform(**cfg)(image).unsqueeze(0)
    with torch.inference_mode():
        probs = model(x).softmax(-1)[0]
    values, indices = probs.topk(3)
    return [(int(i), round(float(v), 4)) for i, v in zip(indices, values, strict=True)]


def test_package_weights_fit_tf_efficientnet_lite0_exactly(
    package_sd: dict[str, torch.Tensor],
) -> None:
    model_keys = list(timm.create_model(PACKAGE_MODEL, pretrained=False).state_dict())
    assert list(package_sd) == model_keys, "package weights must carry timm's keys, in order"
    assert len(package_sd) == 296, f"expected 296 tensors, got {len(package_sd)}"
    assert package_sd["classifier.weight"].shape == (1000, 1280), "ImageNet head must be kept"


def test_package_spec_goes_through_load_weights_file(package_sd: dict[str, torch.Tensor]) -> None:
    sd = load_weights_file(PACKAGE_SPEC)
    assert sd.keys() == package_sd.keys(), "PACKAGE_SPEC must give the mapped package weights"
    assert torch.equal(sd["conv_stem.weight"], package_sd["conv_stem.weight"]), "same tensors"


def test_imagenet_preprocessing_is_tf_lite(imagenet_model: torch.nn.Module) -> None:
    cfg = timm.data.resolve_data_config({}, model=imagenet_model)
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["std"] == (0.5, 0.5, 0.5), f"config: {cfg}"
    assert cfg["interpolation"] == "bicubic" and cfg["input_size"] == (3, 224, 224), f"{cfg}"


def test_package_weights_classify_chelsea_as_cat(imagenet_model: torch.nn.Module) -> None:
    top3 = _top3(imagenet_model, Image.fromarray(skdata.chelsea()))
    assert top3[0][0] in CATS, f"chelsea should be a cat {sorted(CATS)}, top-3 was {top3}"


def test_package_weights_classify_coffee_as_espresso(imagenet_model: torch.nn.Module) -> None:
    top3 = _top3(imagenet_model, Image.fromarray(skdata.coffee()))
    assert top3[0][0] in COFFEE, f"coffee should be espresso/cup {sorted(COFFEE)}, top-3 {top3}"


@pytest.mark.parametrize("layout", ["timm", "efficientnet_pytorch"])
def test_apply_weights_keeps_backbone_and_new_head(
    layout: str, package_sd: dict[str, torch.Tensor]
) -> None:
    source = package_sd
    if layout == "efficientnet_pytorch":  # the raw file, as efficientnet_pytorch names it
        source = load_weights_file(str(package_weights_path()))
        assert "_conv_stem.weight" in source, "raw file should use efficientnet_pytorch keys"
    model = timm.create_model(PACKAGE_MODEL, pretrained=False, num_classes=8)
    apply_weights(model, source)
    loaded = model.state_dict()
    for key, tensor in package_sd.items():
        if key.startswith("classifier."):
            continue
        assert torch.equal(loaded[key], tensor), f"backbone tensor {key} differs from the file"
    assert loaded["classifier.weight"].shape == (8, 1280), "new head must stay 8-class"
    assert loaded["classifier.bias"].shape == (8,), "new head bias must stay 8-class"


def test_apply_weights_refuses_missing_backbone_tensor(package_sd: dict[str, torch.Tensor]) -> None:
    model = timm.create_model(PACKAGE_MODEL, pretrained=False, num_classes=8)
    before = model.conv_stem.weight.detach().clone()
    partial = {k: v for k, v in package_sd.items() if k != "conv_head.weight"}
    with pytest.raises(WeightsError, match=r"conv_head\.weight") as info:
        apply_weights(model, partial)
    assert "--no-pretrained" in str(info.value), f"message must say how to fix: {info.value}"
    assert torch.equal(model.conv_stem.weight, before), "a refused load must not touch the model"


def _small_sd() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {"a.weight": torch.randn(3, 4), "a.bias": torch.randn(3), "n": torch.tensor(7)}


def test_round_trip_safetensors_and_pt(tmp_path: pathlib.Path) -> None:
    sd = _small_sd()
    st_path, pt_path = tmp_path / "w.safetensors", tmp_path / "w.pt"
    safetensors.torch.save_file(sd, str(st_path))
    torch.save(sd, pt_path)
    from_st, from_pt = load_weights_file(str(st_path)), load_weights_file(str(pt_path))
    for name, loaded in (("safetensors", from_st), ("pt", from_pt)):
        assert loaded.keys() == sd.keys(), f"{name}: keys {sorted(loaded)}"
        for key in sd:
            assert torch.equal(loaded[key], sd[key]), f"{name}: tensor {key} changed"


def test_training_checkpoint_is_unwrapped(tmp_path: pathlib.Path) -> None:
    sd = _small_sd()
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "model": sd, "optimizer": {"lr": 0.1}}, path)
    loaded = load_weights_file(str(path))
    assert loaded.keys() == sd.keys(), f"checkpoint's 'model' entry expected, got {sorted(loaded)}"


class _Payload:
    """Pickles to a call: loading it unsafely would create the marker file."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (pathlib.Path(self.marker).touch, ())


def test_malicious_pickle_is_refused_without_running(tmp_path: pathlib.Path) -> None:
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Payload(control)))
    assert control.exists(), "the payload must really run when unpickled unsafely (test is live)"

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(1), "x": _Payload(marker)}, path)
    with pytest.raises(WeightsError, match="not a plain tensor checkpoint") as info:
        load_weights_file(str(path))
    assert not marker.exists(), "loading weights must never execute code from the file"
    assert "--no-pretrained" in str(info.value), f"message must say how to fix: {info.value}"


def test_missing_path_says_how_to_fix(tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(WeightsError) as info:
        load_weights_file(str(missing))
    message = str(info.value)
    assert str(missing) in message, f"message must name the path: {message}"
    assert "--no-pretrained" in message, f"message must mention --no-pretrained: {message}"
    assert "--weights" in message, f"message must mention --weights: {message}"


def test_corrupt_safetensors_is_weights_error(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"not really safetensors")
    with pytest.raises(WeightsError, match="safetensors") as info:
        load_weights_file(str(path))
    assert "--no-pretrained" in str(info.value), f"message must say how to fix: {info.value}"


@pytest.mark.server
def test_load_from_s3(s3_client, bucket: str) -> None:
    """Weights from a real (moto_server) bucket over HTTP, and a clear error for a missing key."""
    sd = _small_sd()
    s3_client.put_object(Bucket=bucket, Key="w/a.safetensors", Body=safetensors.torch.save(sd))
    loaded = load_weights_file(f"s3://{bucket}/w/a.safetensors")
    with pytest.raises(WeightsError, match="--no-pretrained"):
        load_weights_file(f"s3://{bucket}/w/missing.safetensors")
    assert all(torch.equal(loaded[k], sd[k]) for k in sd), "S3 safetensors must round-trip"
