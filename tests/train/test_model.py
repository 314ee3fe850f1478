"""skin.train.model: a timm classifier built with 8 outputs, frozen by policy, rebuilt from a checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from skin.base.config import load_config
from skin.base.labels import CLASSES
from skin.train import checkpoint as ckpt
from skin.train.model import (
    InputSpec,
    apply_freeze,
    build_model,
    classifier_of,
    input_spec,
    is_head_only,
    load_model_from_checkpoint,
    pooled_features,
    train_mode,
)
from skin.train.weights import WeightsError
from tests.recipes import TINY


def trainable_children(model: nn.Module) -> set[str]:
    return {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}


def test_the_head_is_replaced_to_eight_classes() -> None:
    model = build_model("test_resnet", len(CLASSES), pretrained=False).eval()
    head = classifier_of(model)
    assert isinstance(head, nn.Linear) and head.out_features == 8, head
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 8)


def test_weights_from_a_file_fill_the_backbone_and_keep_a_new_head(tmp_path: Path) -> None:
    torch.manual_seed(0)
    imagenet = build_model("test_resnet", 1000, pretrained=False)
    path = tmp_path / "w.pth"
    torch.save(imagenet.state_dict(), path)
    model = build_model("test_resnet", 8, weights=str(path))
    mine, theirs = model.state_dict(), imagenet.state_dict()
    backbone = [k for k in theirs if not k.startswith("fc.")]
    assert backbone and all(torch.equal(mine[k], theirs[k]) for k in backbone), "backbone loaded"
    assert mine["fc.weight"].shape == (8, theirs["fc.weight"].shape[1]), "head of 8 classes"


def test_weights_for_another_architecture_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save(build_model("test_efficientnet", 8, pretrained=False).state_dict(), path)
    with pytest.raises(WeightsError):
        build_model("test_resnet", 8, weights=str(path))


def test_dropout_is_passed_to_the_model() -> None:
    model = build_model("test_resnet", 8, pretrained=False, drop_rate=0.25)
    assert model.drop_rate == 0.25


def test_head_policy_trains_the_classifier_alone() -> None:
    model = build_model("test_resnet", 8, pretrained=False)
    apply_freeze(model, "head")
    assert trainable_children(model) == {"fc"} and is_head_only(model)
    apply_freeze(model, "none")
    assert all(p.requires_grad for p in model.parameters()) and not is_head_only(model)


def test_nothing_trainable_is_not_head_only() -> None:
    model = build_model("test_resnet", 8, pretrained=False).requires_grad_(False)
    assert not is_head_only(model), "a model that trains nothing is not a head-only model"


@pytest.mark.parametrize("n", [1, 2])
def test_last_n_trains_the_last_blocks_what_follows_and_the_head(n: int) -> None:
    model = build_model("test_efficientnet", 8, pretrained=False)
    apply_freeze(model, f"last:{n}")
    blocks = list(model.blocks)
    for i, block in enumerate(blocks):
        wants = i >= len(blocks) - n
        assert all(p.requires_grad == wants for p in block.parameters()), f"block {i} (n={n})"
    assert {"conv_head", "bn2", "classifier"} <= trainable_children(model), "after the blocks"
    assert not {"conv_stem", "bn1"} & trainable_children(model), "before the blocks stays frozen"


def test_last_n_on_stages_covers_the_layers_after_them() -> None:
    model = build_model("test_convnext", 8, pretrained=False)
    apply_freeze(model, "last:1")
    assert trainable_children(model) == {"stages", "head"} | (
        {"norm_pre"} if any(True for _ in model.norm_pre.parameters()) else set()
    ), trainable_children(model)
    assert all(p.requires_grad for p in model.stages[-1].parameters())
    assert not any(p.requires_grad for p in model.stages[0].parameters())


def test_last_n_on_a_model_without_blocks_is_refused_by_name() -> None:
    model = build_model("test_resnet", 8, pretrained=False)
    with pytest.raises(ValueError, match="freeze 'last:1': model ResNet has no blocks/stages"):
        apply_freeze(model, "last:1")


def test_train_mode_keeps_frozen_batchnorm_in_eval_and_the_rest_training() -> None:
    model = build_model("test_efficientnet", 8, pretrained=False)
    apply_freeze(model, "last:1")
    train_mode(model)
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            frozen = not any(p.requires_grad for p in module.parameters())
            assert module.training is not frozen, f"{name}: frozen={frozen}"
    assert model.training and model.classifier.training
    apply_freeze(model, "none")
    train_mode(model)
    assert all(m.training for m in model.modules()), "nothing frozen: everything trains"


def test_input_spec_reads_timm_and_resizes() -> None:
    model = build_model("test_resnet", 8, pretrained=False)
    spec = input_spec(model)
    assert spec.size == 160 and spec.mean == (0.5, 0.5, 0.5) and spec.std == (0.5, 0.5, 0.5)
    assert spec.interpolation == "bilinear" and spec.crop_pct == pytest.approx(0.95)
    small = input_spec(model, 32)
    assert small.size == 32 and small.cache_size == round(32 / 0.95), small


@pytest.mark.parametrize(
    ("size", "crop", "cache"), [(224, 0.875, 256), (32, 1.0, 32), (32, 1.5, 32)]
)
def test_the_cache_side_is_the_eval_resize_never_smaller_than_the_input(
    size: int, crop: float, cache: int
) -> None:
    spec = InputSpec(size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "bicubic", crop)
    assert spec.cache_size == cache


def test_pooled_features_are_what_the_classifier_reads() -> None:
    model = build_model("test_resnet", 8, pretrained=False).eval()
    x = torch.randn(3, 3, 32, 32)
    feats = pooled_features(model, x)
    assert feats.shape == (3, model.num_features) and not feats.requires_grad
    with torch.no_grad():
        assert torch.allclose(classifier_of(model)(feats), model(x), atol=1e-5)


def test_a_model_is_rebuilt_from_its_checkpoint_alone(tmp_path: Path) -> None:
    torch.manual_seed(1)
    cfg = load_config(None, dict(TINY)).model_dump(mode="json")
    model = build_model("test_resnet", 8, pretrained=False).eval()
    state = {"model": model.state_dict(), "config": cfg, "classes": list(CLASSES)}
    path = ckpt.save(tmp_path, 1, state, is_best=True, keep=None)
    rebuilt, loaded = load_model_from_checkpoint(path, torch.device("cpu"))
    assert not rebuilt.training, "rebuilt for inference"
    assert loaded["classes"] == list(CLASSES) and loaded["epoch"] == 1
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x)), "the same weights give the same logits"


def test_a_checkpoint_whose_config_is_not_valid_is_refused(tmp_path: Path) -> None:
    cfg = load_config(None, dict(TINY)).model_dump(mode="json")
    cfg["model"]["surprise"] = 1
    state = {"model": {}, "config": cfg, "classes": list(CLASSES)}
    path = ckpt.save(tmp_path, 1, state, is_best=True, keep=None)
    with pytest.raises(ValueError, match="surprise"):
        load_model_from_checkpoint(path, torch.device("cpu"))
