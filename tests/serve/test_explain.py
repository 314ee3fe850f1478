"""Class-activation maps: the layer chosen per architecture, maps on prediction's own inputs, TTA
and ensembles, and Adebayo et al.'s sanity checks (maps that follow the model and the evidence)."""

from __future__ import annotations

import base64
import copy
import io

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from skin.serve.averaging import EnsemblePredictor
from skin.serve.explain import (
    ExplainError,
    class_maps,
    explain_arrays,
    mass_share,
    overlay_base64,
    randomised_cascade,
    spearman,
    target_layer,
)
from skin.serve.predict import ModelSource, Predictor
from skin.train.datasets import Normalize
from tests.helpers import plain_spec
from tests.recipes import planted_patches, train_planted

EXPLAINED = 128  # maps are read at 128 px (a 4 × 4 grid at stride 32), training ran at 64 px


@pytest.fixture(scope="module")
def trained() -> tuple[torch.nn.Module, Normalize]:
    return train_planted()


@pytest.fixture(scope="module")
def evidence() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return planted_patches(32, EXPLAINED, seed=1)


def _predictor(net: torch.nn.Module, size: int, *, tta: bool = False) -> Predictor:
    source = ModelSource("test", "test", "test")
    return Predictor(net, plain_spec(size), ("A", "B"), torch.device("cpu"), source, tta=tta)


@pytest.mark.parametrize(
    ("name", "layer"),
    [("test_resnet", "layer4"), ("test_efficientnet", "bn2"), ("test_convnext", "norm_pre")],
)
def test_a_cnn_is_mapped_at_the_feature_map_its_head_pools(name: str, layer: str) -> None:
    net = timm.create_model(name, num_classes=3, pretrained=False).eval()
    assert target_layer(net, 64) == layer


def test_a_transformer_is_mapped_at_its_last_block_and_its_tokens_become_a_grid() -> None:
    net = timm.create_model("test_vit", num_classes=2, pretrained=False, img_size=64).eval()
    layer = target_layer(net, 64)
    assert layer == f"blocks.{len(net.blocks) - 1}.norm1"
    images = np.random.default_rng(0).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    cams = class_maps(net, Normalize(plain_spec(64)), images, [0, 1])
    assert cams.shape == (2, 64, 64) and np.isfinite(cams).all()


def test_a_named_layer_is_used_and_an_unknown_one_is_refused_by_name() -> None:
    net = timm.create_model("test_resnet", num_classes=2, pretrained=False).eval()
    assert target_layer(net, 64, "layer3") == "layer3"
    with pytest.raises(ExplainError, match="'layer9' is not a layer of ResNet"):
        target_layer(net, 64, "layer9")


def test_maps_come_in_the_image_size_scaled_to_one_for_both_methods(trained, evidence) -> None:
    net, norm = trained
    images, labels, _ = evidence
    for method in ("gradcam", "eigencam"):
        cams = class_maps(net, norm, images[:4], labels[:4], method=method)
        assert cams.shape == (4, EXPLAINED, EXPLAINED) and cams.dtype == np.float32
        assert cams.min() >= 0 and np.allclose(cams.max(axis=(1, 2)), 1.0), method
    with pytest.raises(ExplainError, match=r"explain\.method 'lime'"):
        class_maps(net, norm, images[:1], [0], method="lime")


def test_a_tta_map_turns_with_the_image(trained, evidence) -> None:
    """TTA predicts the mean over the 8 views, so its map of a turned image is the turned map."""
    net, norm = trained
    image, label = evidence[0][:1], evidence[1][:1]
    turned = np.ascontiguousarray(np.rot90(image, 1, axes=(1, 2)))
    cam = class_maps(net, norm, image, label, tta=True)
    cam_turned = class_maps(net, norm, turned, label, tta=True)
    np.testing.assert_allclose(np.rot90(cam, 1, axes=(1, 2)), cam_turned, atol=2e-3)


def test_the_explained_class_defaults_to_the_answer_and_can_be_named(trained, evidence) -> None:
    net, _ = trained
    images = evidence[0][:4]
    predictor = _predictor(net, EXPLAINED)
    maps = explain_arrays(predictor, images)
    np.testing.assert_array_equal(maps.targets, predictor.predict_arrays(images).argmax(1))
    assert maps.layer == "layer4" and maps.method == "gradcam"
    assert (explain_arrays(predictor, images, "B").targets == 1).all()
    with pytest.raises(ExplainError, match=r"class 'MEL' is not one of .*\['A', 'B'\]"):
        explain_arrays(predictor, images, "MEL")


def test_an_ensembles_map_is_the_mean_of_its_members_maps(trained, evidence) -> None:
    net, _ = trained
    other = copy.deepcopy(net)
    with torch.no_grad():
        other.fc.weight.mul_(-1.0)  # a second member that disagrees
    members = [_predictor(net, EXPLAINED), _predictor(other, EXPLAINED)]
    ensemble = EnsemblePredictor(members, ModelSource("ens", "ens", "ens"))
    images = evidence[0][:3]
    maps = explain_arrays(ensemble, images, "A")
    singles = [explain_arrays(m, images, "A").cams for m in members]
    mean = np.mean(singles, axis=0)
    mean = (mean - mean.min(axis=(1, 2), keepdims=True)) / np.ptp(mean, axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(maps.cams, mean, atol=1e-5)


def test_the_overlay_is_a_png_of_the_image_size(trained, evidence) -> None:
    net, norm = trained
    image = evidence[0][0]
    cam = class_maps(net, norm, image[None], [0])[0]
    png = Image.open(io.BytesIO(base64.b64decode(overlay_base64(image, cam))))
    assert png.format == "PNG" and png.size == (EXPLAINED, EXPLAINED) and png.mode == "RGB"


# --------------------------------------------------------------------------- sanity checks


def test_maps_concentrate_on_the_planted_patch_that_decides_the_class(trained, evidence) -> None:
    """Adebayo et al.'s data check, inverted: the only evidence is a small patch at a random
    place, so a map that shows evidence puts far more than the patch's area share on it."""
    net, norm = trained
    images, labels, masks = evidence
    assert (_predictor(net, EXPLAINED).predict_arrays(images).argmax(1) == labels).mean() >= 0.9
    area = masks[0].mean()
    for method in ("gradcam", "eigencam"):
        cams = class_maps(net, norm, images, labels, method=method)
        share = np.nanmedian([mass_share(c, m) for c, m in zip(cams, masks, strict=True)])
        assert share > 3 * area, f"{method}: {share:.3f} of the map on {area:.3f} of the image"


def test_maps_fall_apart_when_the_weights_are_randomised_layer_by_layer(trained, evidence) -> None:
    """Adebayo et al.'s model check: re-initialising the network from the head down must change
    the maps (Spearman rank correlation with the trained model's maps falls), while a tiny
    perturbation of the weights must not (so the correlation can measure a change)."""
    net, norm = trained
    images, labels = evidence[0][:16], evidence[1][:16]
    before = class_maps(net, norm, images, labels)

    def similarity(other: torch.nn.Module) -> float:
        after = class_maps(other, norm, images, labels)
        rho = [spearman(a, b) for a, b in zip(before, after, strict=True)]
        return float(np.median(np.nan_to_num(rho, nan=0.0)))  # a flat map keeps no ranking

    nudged = copy.deepcopy(net)
    with torch.no_grad():
        for p in nudged.parameters():
            p.add_(1e-3 * p.std() * torch.randn_like(p))
    assert similarity(nudged) > 0.9
    randomised = copy.deepcopy(net)
    steps = {name: similarity(randomised) for name in randomised_cascade(randomised)}
    order = list(steps)
    assert (order[0], order[-1]) == ("fc", "conv1"), steps
    assert max(steps.values()) < 0.7 and np.mean(list(steps.values())) < 0.5, steps
