"""Recipes shared by the tests and the benchmarks (no side effects on import, unlike conftest)."""

from __future__ import annotations

# A small, fast recipe that still learns: timm's own test ResNet at 32 px, from random weights.
TINY = {
    "model.name": "test_resnet",
    "model.pretrained": False,
    "model.freeze": "none",
    "train.batch_size": 32,
    "train.image_size": 32,
    "train.lr": 0.003,
    "split.fractions": [0.6, 0.2, 0.2],
}
