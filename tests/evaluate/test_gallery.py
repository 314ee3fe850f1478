"""The error gallery: which test images it shows, in what order, bounded in number; the sheets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
from PIL import Image

from skin.base.config import ExplainConfig
from skin.evaluate import gallery
from skin.evaluate.gallery import error_picks, mel_misses, write_gallery
from tests.helpers import plain_spec

CLASSES = ("MEL", "NV", "BCC")


def _probs(answers: list[int], confidence: list[float]) -> np.ndarray:
    probs = np.full((len(answers), 3), 0.0)
    for i, (a, c) in enumerate(zip(answers, confidence, strict=True)):
        probs[i] = (1 - c) / 2
        probs[i, a] = c
    return probs


def test_each_class_shows_its_most_confident_mistakes_and_least_confident_hits() -> None:
    y = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    probs = _probs([1, 2, 1, 0, 0, 1, 0, 1], [0.6, 0.9, 0.7, 0.8, 0.5, 0.95, 0.55, 0.6])
    shown = error_picks(y, probs, per_class=2, limit=48)
    assert shown.index.tolist() == [1, 2, 4, 3, 6, 7, 5]
    hit = "least sure hit"
    assert shown.why == ["mistake", "mistake", hit, hit, "mistake", hit, hit]
    capped = error_picks(y, probs, per_class=2, limit=3)
    assert capped.index.tolist() == [1, 2, 4] and len(capped.why) == 3


def test_melanoma_misses_are_those_under_the_threshold_most_confidently_missed_first() -> None:
    y = np.array([0, 0, 0, 1, 0])
    probs = _probs([0, 1, 1, 1, 2], [0.9, 0.8, 0.6, 0.9, 0.7])  # p(MEL): .9 .1 .2 .05 .15
    shown = mel_misses(y, probs, CLASSES, threshold=0.3, limit=10)
    assert shown.index.tolist() == [1, 4, 2], "the non-melanoma (row 3) is no miss"
    assert mel_misses(y, probs, CLASSES, 0.3, limit=2).index.tolist() == [1, 4]
    assert len(mel_misses(y, probs, ("NV", "BCC", "AK"), 0.3, 10).index) == 0


def test_the_gallery_draws_each_sheet_with_at_most_its_bound_of_maps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(0)
    n, size = 40, 64
    images = rng.integers(0, 255, (n, size + 8, size + 8, 3), dtype=np.uint8)  # cropped to 64
    rows = rng.permutation(n)
    y = rng.integers(0, 3, n)
    probs = rng.dirichlet(np.ones(3), n)
    net = timm.create_model("test_resnet", num_classes=3, pretrained=False).eval()
    mapped: list[tuple[int, ...]] = []
    real = gallery.class_maps

    def counted(net, norm, crops, targets, **kw):  # type: ignore[no-untyped-def]
        mapped.append(crops.shape)
        return real(net, norm, crops, targets, **kw)

    monkeypatch.setattr(gallery, "class_maps", counted)
    settings = ExplainConfig(gallery=3, gallery_max=7)
    files = write_gallery(tmp_path, "test", net, plain_spec(size), images, rows, y, probs,
                          CLASSES, settings, mel_threshold=0.5)  # fmt: skip
    assert [f.name for f in files] == ["gallery_test.png", "gallery_test_mel_misses.png"]
    assert all(shape[0] <= 7 and shape[1:] == (size, size, 3) for shape in mapped), mapped
    for f in files:
        with Image.open(f) as png:
            assert png.format == "PNG" and png.width > 300
    off = ExplainConfig(gallery=0)
    assert write_gallery(tmp_path / "none", "test", net, plain_spec(size), images, rows, y, probs,
                         CLASSES, off) == []  # fmt: skip
