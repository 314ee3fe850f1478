"""Recipes shared by the tests and the benchmarks (no side effects on import, unlike conftest)."""

from __future__ import annotations

from typing import Any

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


def planted_patches(n: int, size: int, seed: int = 0, patch: int = 12) -> tuple[Any, Any, Any]:
    """Synthetic lesions whose class is only a planted patch's colour (green 0, magenta 1) at a
    random place: uint8 images [n, size, size, 3], labels [n], and each patch's mask [n, size, size]."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = np.empty((n, size, size, 3), np.uint8)
    labels = rng.integers(0, 2, n)
    masks = np.zeros((n, size, size), bool)
    colours = np.array([(40, 160, 60), (160, 40, 160)], float)
    for i in range(n):
        img = (
            np.array([200.0, 150, 130]) + rng.normal(0, 10, 3) + rng.normal(0, 12, (size, size, 3))
        )
        cx, cy = size / 2 + rng.normal(0, 4, 2)
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 < (size * rng.uniform(0.2, 0.3)) ** 2
        img[disc] *= 0.5  # the lesion: the same in both classes
        x0, y0 = rng.integers(0, size - patch, 2)
        img[y0 : y0 + patch, x0 : x0 + patch] = colours[labels[i]] + rng.normal(
            0, 10, (patch, patch, 3)
        )
        masks[i, y0 : y0 + patch, x0 : x0 + patch] = True
        images[i] = img.clip(0, 255)
    return images, labels, masks


def train_planted(size: int = 64, epochs: int = 3, seed: int = 0) -> tuple[Any, Any]:
    """timm's test ResNet trained on `planted_patches` (a few seconds on one CPU thread): the
    network (eval mode) and its `Normalize`."""
    import torch
    from timm import create_model
    from torch.nn.functional import cross_entropy

    from skin.train.datasets import Normalize
    from skin.train.model import InputSpec

    torch.manual_seed(seed)
    images, labels, _ = planted_patches(192, size, seed)
    norm = Normalize(InputSpec(size, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "bicubic", 1.0))
    net = create_model("test_resnet", num_classes=2, pretrained=False)
    opt = torch.optim.AdamW(net.parameters(), 3e-3)
    x, y = torch.from_numpy(images).permute(0, 3, 1, 2), torch.from_numpy(labels)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for i in range(0, len(x), 32):
            idx = order[i : i + 32]
            loss = cross_entropy(net(norm(x[idx])), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval(), norm
