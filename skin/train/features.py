"""Frozen-backbone features computed once, so head-only training never re-runs the backbone."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from skin.data.imagecache import ImageCache
from skin.data.images import centre_crop
from skin.train.datasets import EvalImages, Normalize, make_loader
from skin.train.model import InputSpec, pooled_features

log = logging.getLogger(__name__)


def backbone_fingerprint(model: nn.Module) -> str:
    """Hash of every non-classifier tensor: features are reusable only for identical weights."""
    head = {id(p) for p in model.get_classifier().parameters()}
    h = hashlib.sha256()
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if id(tensor) in head:
            continue
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def extract(
    model: nn.Module,
    cache: ImageCache,
    spec: InputSpec,
    device: torch.device,
    *,
    batch_size: int = 256,
    channels_last: bool = False,
    dtype: torch.dtype | None = None,
    folder: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Pooled features for every cached image (BatchNorm in eval), row i for cache row i (so
    indexed like the images, by `cache.rows_for`), stored beside the image cache under the
    backbone's fingerprint so later runs with the same weights reuse them."""
    path = None
    if folder is not None:
        path = folder / f"features-{backbone_fingerprint(model)}-{spec.size}.npy"
        if path.exists():
            feats = np.load(path)
            if len(feats) != len(cache.images):
                raise ValueError(f"{path} has {len(feats)} rows for {len(cache.images)} images")
            return torch.from_numpy(feats)
    model.eval()
    rows = np.arange(len(cache.images))
    data = EvalImages(cache, rows, np.zeros(len(rows), dtype=np.int64), spec.size)
    prep = Normalize(spec, channels_last).to(device)
    chunks = []
    for x, _ in make_loader(data, batch_size=batch_size, shuffle=False, seed=0):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            f = pooled_features(model, prep(x.to(device, non_blocking=True)))
        chunks.append(f.float().cpu())
        if progress:
            progress(len(x))
    feats = torch.cat(chunks)
    if path is not None:
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, feats.numpy())
        tmp.replace(path)
    return feats


class HeadOnFeatures(nn.Module):
    """The model's own classifier (same parameters) applied to cached pooled features."""

    def __init__(self, classifier: nn.Module, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.drop = nn.Dropout(drop_rate)
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.drop(x))


class FeatureSet(Dataset):
    """Cached features as a dataset: batches come from the same loader (and order) as images."""

    def __init__(self, feats: torch.Tensor, labels: np.ndarray) -> None:
        self.feats, self.labels = feats, torch.as_tensor(labels, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.feats[i], int(self.labels[i])

    def __getitems__(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(idx, dtype=torch.long)
        return self.feats[index], self.labels[index]


def image_embedder(
    model: nn.Module, spec: InputSpec, load: Callable[[list[str], int], list[np.ndarray | None]]
) -> Callable[[list[str]], np.ndarray]:
    """Keys in, one L2-normalised pooled backbone feature per key out (zeros where an image
    cannot be read, so it confirms nothing): how the audit checks a hash pair by its content.
    `load(keys, side)` decodes the images at `side`."""
    prep = Normalize(spec)
    model.eval()

    def embed(keys: list[str]) -> np.ndarray:
        out = np.zeros((len(keys), model.num_features), dtype=np.float32)
        for start in range(0, len(keys), 64):
            batch = keys[start : start + 64]
            pixels = load(batch, spec.cache_size)
            ok = [i for i, p in enumerate(pixels) if p is not None]
            if not ok:
                continue
            images = np.stack([centre_crop(pixels[i], spec.size) for i in ok])
            x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
            feats = pooled_features(model, prep(x)).float().numpy()
            out[[start + i for i in ok]] = feats
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)

    return embed
