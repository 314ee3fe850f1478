"""What a training is fed: each split's rows in the decoded cache, and the batches `fit` draws.

Two feeds: backbone features computed once (a head-only model without augmentation trains its
classifier on them), or decoded images, normalised and optionally augmented on the device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from skin.base.config import AugmentConfig, PipelineConfig, TrainConfig
from skin.base.progress import Factory as Progress
from skin.base.progress import silent
from skin.base.runs import cache_root
from skin.data import manifest as mf
from skin.data.imagecache import ImageCache
from skin.data.shards import ShardedImages, image_cache
from skin.train.augment import BatchAugment
from skin.train.datasets import (
    EvalImages,
    Normalize,
    TrainImages,
    default_workers,
    make_loader,
    set_epoch,
)
from skin.train.distributed import World
from skin.train.features import FeatureSet, HeadOnFeatures, extract
from skin.train.loop import Batches, amp_dtype
from skin.train.model import InputSpec, train_mode

Prep = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class SplitImages:
    """A manifest over its decoded-image cache: per split, the cache rows (in manifest order) of
    its usable images and their class indices; with a held-out class, its dev and test images
    apart in `unknown` (never trained on, scored as unknown)."""

    cache: ImageCache
    spec: InputSpec
    classes: tuple[str, ...]
    rows: dict[str, np.ndarray] = field(default_factory=dict)
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    unknown: dict[str, np.ndarray] = field(default_factory=dict)


def index_splits(
    manifest: pd.DataFrame, cfg: PipelineConfig, spec: InputSpec, progress: Progress = silent
) -> SplitImages:
    """Build (or reuse) the decoded-image cache and find each split's rows in it, by key.

    The cache (and the split) cover every class; a held-out class is set apart only here."""
    classes = cfg.data.known_classes
    root = cache_root(cfg.work_dir)
    cache = image_cache(manifest, spec.cache_size, root, cfg.shared, progress)
    at = cache.rows_for(manifest["key"])  # manifest row i is cache row at[i]
    index = {c: i for i, c in enumerate(classes)}
    held = (manifest["label"] == cfg.data.holdout_class).to_numpy()
    found = SplitImages(cache, spec, classes)
    for split in mf.SPLITS:
        mask = (manifest["split"] == split).to_numpy() & cache.ok[at]
        if split != "train" and cfg.data.holdout_class is not None:
            found.unknown[split] = at[np.flatnonzero(mask & held)]
        if split == "train":
            mask &= manifest["keep"].to_numpy().astype(bool)
        rows = np.flatnonzero(mask & ~held)
        found.rows[split] = at[rows]
        found.labels[split] = manifest["label"].iloc[rows].map(index).to_numpy().astype(np.int64)
    if len(found.rows["train"]) == 0 or len(found.rows["dev"]) == 0:
        raise ValueError("no usable train or dev images after decoding; see the bad-image report")
    return found


@dataclass(frozen=True)
class Placement:
    """Where the model runs: its device, channels-last memory, and the autocast dtype."""

    device: torch.device
    channels_last: bool
    dtype: torch.dtype | None


def place_model(model: torch.nn.Module, device: torch.device, train: TrainConfig) -> Placement:
    """Move the model to `device` (channels-last on CUDA when asked) and pick its AMP dtype."""
    model.to(device)
    channels_last = train.channels_last and device.type == "cuda"
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return Placement(device, channels_last, amp_dtype(device, train.amp))


def backbone_features(
    model: torch.nn.Module, data: SplitImages, place: Placement, progress: Progress = silent
) -> torch.Tensor:
    """Pooled backbone features of every cached image, stored beside the cache (reused)."""
    return extract(
        model,
        data.cache,
        data.spec,
        place.device,
        channels_last=place.channels_last,
        dtype=place.dtype,
        folder=data.cache.path,
        progress=progress("backbone features", len(data.cache.images)),
    )


@dataclass(frozen=True)
class Feeds:
    """What `fit` trains (`net`) and how: its batches, their preparation on the device, the
    train-mode switch, and this rank's steps per epoch (= the global steps)."""

    net: torch.nn.Module
    train_batches: Callable[[int], Batches]
    dev_batches: Callable[[], Batches]
    prep: Prep
    train_prep: Prep
    set_mode: Callable[[], None]
    steps: int


def _train_order(train: TrainConfig, world: World) -> dict[str, Any]:
    """make_loader's arguments for the training order: this rank's share of each global batch."""
    return {
        "batch_size": train.batch_size // world.size,
        "shuffle": True,
        "seed": train.seed,
        "balanced": train.sampler == "balanced",
        "rank": world.rank,
        "world": world.size,
    }


def feature_feeds(
    model: torch.nn.Module,
    feats: torch.Tensor,
    data: SplitImages,
    train: TrainConfig,
    drop_rate: float,
    device: torch.device,
    world: World,
) -> Feeds:
    """The classifier alone, trained on the cached backbone features (moved to the device)."""
    feats = feats.to(device)
    net = HeadOnFeatures(model.get_classifier(), drop_rate)
    train_fs = FeatureSet(feats[data.rows["train"]], data.labels["train"])
    dev_fs = FeatureSet(feats[data.rows["dev"]], data.labels["dev"])
    order = _train_order(train, world)

    def train_batches(epoch: int) -> Batches:
        return make_loader(train_fs, epoch=epoch, labels=data.labels["train"], **order)

    def dev_batches() -> Batches:
        return make_loader(dev_fs, batch_size=train.batch_size, shuffle=False, seed=train.seed)

    def unchanged(x: torch.Tensor) -> torch.Tensor:
        return x

    steps = len(train_batches(1))
    return Feeds(net, train_batches, dev_batches, unchanged, unchanged, net.train, steps)


def _train_images(data: SplitImages, aug: AugmentConfig, per_image: bool) -> Dataset:
    """Train images: augmented per image by workers, whole (cropped on the device), or cropped."""
    rows, labels = data.rows["train"], data.labels["train"]
    if per_image:
        return TrainImages(data.cache, rows, labels, data.spec.size, aug)
    if aug.enabled:  # whole cached images; the crop happens on the device
        return EvalImages(data.cache, rows, labels, data.cache.size)
    return EvalImages(data.cache, rows, labels, data.spec.size)


def _image_batches(
    dataset: Dataset,
    data: SplitImages,
    order: dict[str, Any],
    window: int,
    workers: int,
    pin: bool,
    keep_workers: bool,
) -> Callable[[int], Batches]:
    """Each epoch's train loader; streamed shards are visited a window of shards at a time."""
    streamed = isinstance(data.cache.images, ShardedImages)
    blocks = data.cache.images.blocks(data.rows["train"]) if streamed else None

    def loader(epoch: int, persistent: bool = False) -> Batches:
        return make_loader(
            dataset,
            blocks=blocks,
            window=window,
            epoch=epoch,
            labels=data.labels["train"],
            num_workers=workers,
            pin_memory=pin,
            persistent=persistent,
            **order,
        )

    if not keep_workers:
        return loader
    kept = loader(1, persistent=True)  # workers that only read live across epochs
    return lambda epoch: set_epoch(kept, epoch)


def image_feeds(
    model: torch.nn.Module,
    data: SplitImages,
    train: TrainConfig,
    window: int,
    place: Placement,
    world: World,
) -> Feeds:
    """The whole model on decoded images, normalised (and batch-augmented) on the device."""
    normalize = Normalize(data.spec, place.channels_last).to(place.device)
    aug = train.augment
    per_image = aug.enabled and aug.backend == "workers"
    workers = train.num_workers
    if workers is None:
        workers = default_workers(per_image, place.device)
    pin = place.device.type == "cuda"
    train_ds = _train_images(data, aug, per_image)
    order = _train_order(train, world)
    keep = workers > 0 and not per_image  # no per-image randomness: workers may outlive epochs
    train_batches = _image_batches(train_ds, data, order, window, workers, pin, keep)
    train_prep: Prep = normalize
    if aug.enabled and not per_image:
        train_prep = _then(BatchAugment(aug, data.spec.size), normalize)
    dev_ds = EvalImages(data.cache, data.rows["dev"], data.labels["dev"], data.spec.size)

    def dev_batches() -> Batches:
        return make_loader(
            dev_ds, batch_size=train.batch_size, shuffle=False, seed=train.seed, pin_memory=pin
        )

    net = torch.compile(model) if train.compile else model
    steps = len(train_batches(1))
    set_mode = partial(train_mode, model)
    return Feeds(net, train_batches, dev_batches, normalize, train_prep, set_mode, steps)


def _then(first: Prep, second: Prep) -> Prep:
    """`second(first(x))`: the batch augmentation, then the normalisation."""

    def both(x: torch.Tensor) -> torch.Tensor:
        return second(first(x))

    return both
