"""Batched augmentation on the device: exact geometry, torchvision's colour maths, fair draws."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as tvf

from skin.base.config import AugmentConfig
from skin.train.augment import BatchAugment, Draw
from skin.train.datasets import DIHEDRAL, dihedral_view

ON = AugmentConfig(enabled=True)


def images(n: int = 6, side: int = 24, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=g)


def test_identity_draw_returns_the_image() -> None:
    x = images()
    y = BatchAugment(ON, 24)(x, Draw.identity(len(x)))
    assert y.dtype == torch.float32
    assert torch.allclose(y, x.float(), atol=1e-3)


def test_the_eight_symmetries_are_the_exact_dihedral_views() -> None:
    x = images()
    aug = BatchAugment(AugmentConfig(enabled=True, color_jitter=0.0), 24)
    group = aug.draw(2000).symmetry.unique(dim=0)
    assert len(group) == 8, "flips + quarter turns draw all 8 symmetries of the square"
    views = [dihedral_view(x, k, t).float() for k, t in DIHEDRAL]
    matched = set()
    for m in group:
        d = Draw.identity(len(x))
        d.symmetry = m.expand(len(x), 2, 2).clone()
        y = aug(x, d)
        hits = [i for i, v in enumerate(views) if torch.allclose(y, v, atol=1e-3)]
        assert len(hits) == 1, f"symmetry {m.tolist()} is not exactly one dihedral view"
        matched.add(hits[0])
    assert matched == set(range(8))


@pytest.mark.parametrize(
    ("flips", "turns", "expected"), [(True, False, 4), (False, True, 4), (False, False, 1)]
)
def test_symmetry_options_restrict_the_group(flips: bool, turns: bool, expected: int) -> None:
    cfg = AugmentConfig(enabled=True, flips=flips, rotate90=turns)
    group = BatchAugment(cfg, 24).draw(1000).symmetry.unique(dim=0)
    assert len(group) == expected
    if turns and not flips:
        assert torch.allclose(torch.linalg.det(group), torch.ones(4)), "turns keep handedness"


def test_a_crop_box_samples_exactly_that_region() -> None:
    x = images(side=32)
    d = Draw.identity(len(x))
    d.width, d.height = torch.full((6,), 0.5), torch.full((6,), 0.5)
    d.centre = torch.tensor([[0.5, -0.5]]).expand(6, 2).clone()  # right half, upper half
    y = BatchAugment(AugmentConfig(enabled=True, color_jitter=0.0), 16)(x, d)
    assert torch.allclose(y, x[:, :, 0:16, 16:32].float(), atol=1e-3)


def test_crop_draws_follow_random_resized_crop() -> None:
    cfg = AugmentConfig(enabled=True, scale_min=0.3)
    torch.manual_seed(3)
    d = BatchAugment(cfg, 24).draw(5000)
    area, aspect = d.width * d.height, d.width / d.height
    assert area.min() >= 0.3 - 1e-6 and area.max() <= 1 + 1e-6
    assert aspect.min() >= 3 / 4 - 1e-6 and aspect.max() <= 4 / 3 + 1e-6
    inside = d.centre.abs() + torch.stack([d.width, d.height], 1)
    assert inside.max() <= 1 + 1e-6, "every crop box lies inside the image"
    ref = [
        RandomResizedCrop.get_params(torch.empty(3, 240, 240), [0.3, 1.0], [3 / 4, 4 / 3])
        for _ in range(5000)
    ]
    ref_area = torch.tensor([h * w / 240**2 for _, _, h, w in ref])
    assert float(area.mean()) == pytest.approx(float(ref_area.mean()), abs=0.02), (
        "torchvision's distribution"
    )


@pytest.mark.parametrize(
    ("field", "reference"),
    [
        ("brightness", tvf.adjust_brightness),
        ("contrast", tvf.adjust_contrast),
        ("saturation", tvf.adjust_saturation),
    ],
)
@pytest.mark.parametrize("factor", [0.7, 1.3])
def test_colour_factors_match_torchvision(field: str, reference, factor: float) -> None:
    x = images()
    d = Draw.identity(len(x))
    setattr(d, field, torch.full((len(x),), factor))
    y = BatchAugment(ON, 24)(x, d) / 255
    want = reference(x.float() / 255, factor)
    assert (y - want).abs().max() < 2e-3


def test_hue_turns_like_torchvision_and_keeps_grey() -> None:
    x = images(n=16)
    d = Draw.identity(len(x))
    d.hue = torch.full((len(x),), 0.2)
    y = BatchAugment(ON, 24)(x, d)
    inside = ((y > 0.5) & (y < 254.5)).all(1)  # where nothing was clipped
    kept = (y.mean(1) - x.float().mean(1)).abs()[inside]
    assert kept.max() < 1e-2, "a hue turn keeps each pixel's grey level (mean of R, G, B)"
    grey = torch.full((1, 3, 4, 4), 100, dtype=torch.uint8)
    assert torch.allclose(BatchAugment(ON, 4)(grey, Draw.identity(1)), grey.float(), atol=1e-3)
    want = tvf.adjust_hue(x.float() / 255, 0.2)
    ours = (y / 255 - want).abs().mean()
    unchanged = (x.float() / 255 - want).abs().mean()
    assert ours < unchanged / 2, f"turns the way HSV does: {ours:.3f} vs {unchanged:.3f} untouched"


def test_draws_depend_only_on_the_seed() -> None:
    x = images()
    aug = BatchAugment(ON, 16)
    torch.manual_seed(7)
    a = aug(x)
    torch.manual_seed(7)
    b = aug(x)
    torch.manual_seed(8)
    c = aug(x)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (6, 3, 16, 16) and a.min() >= 0 and a.max() <= 255


def test_refuses_what_is_not_a_uint8_rgb_batch() -> None:
    with pytest.raises(ValueError, match="uint8 batch"):
        BatchAugment(ON, 16)(images().float())
    with pytest.raises(ValueError, match="uint8 batch"):
        BatchAugment(ON, 16)(images()[:, :1])


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["device", "workers"])
def test_augmented_training_learns(tmp_path, sample_data, backend: str) -> None:
    from skin.evaluate.stage import evaluate_stage
    from skin.track.tracking import NullTracker
    from skin.train.stage import train_stage
    from tests.helpers import make_manifest

    extra = {
        "train.epochs": 8,
        "train.augment.enabled": True,
        "train.augment.backend": backend,
        "train.augment.scale_min": 0.8,
    }
    uri, cfg = make_manifest(tmp_path, sample_data, **extra)
    out = train_stage(uri, cfg, NullTracker(f"aug-{backend}"))
    assert not out.feature_path
    m = evaluate_stage(uri, out.best_checkpoint, cfg, NullTracker(f"aug-{backend}")).metrics
    assert m["test_balanced_accuracy"] > 0.4, f"chance is 0.125; got {m['test_balanced_accuracy']}"
