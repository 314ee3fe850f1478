"""loader: fine-tuning images/s with the real loader vs the same step fed from tensors in RAM."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks.common import Context, result
from benchmarks.data import isic_like, manifest
from skin.base.config import AugmentConfig, load_config
from skin.data.imagecache import ImageCache, build_cache
from skin.train.augment import BatchAugment
from skin.train.datasets import EvalImages, Normalize, TrainImages, default_workers, make_loader
from skin.train.model import InputSpec, input_spec, train_mode
from skin.train.stage import make_model

NAME = "loader"
TARGET = 0.9
MODEL = "tf_mixnet_s"


class Step:
    """One full fine-tuning step (every layer trains): [augment], normalise, forward, backward,
    Adam. With `augment`, uint8 batches are augmented in the step, as `train_stage` does."""

    def __init__(
        self, model: nn.Module, spec: InputSpec, augment: BatchAugment | None = None
    ) -> None:
        self.model, self.norm, self.augment = model, Normalize(spec), augment
        self.opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        self.loss = nn.CrossEntropyLoss()

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        train_mode(self.model)
        if self.augment is not None:
            x = self.augment(x)
        x = self.norm(x) if x.dtype != torch.float32 or self.augment is not None else x
        loss = self.loss(self.model(x), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


Feed = tuple[Step, Iterable[tuple[torch.Tensor, torch.Tensor]]]


def timed_steps(step: Step, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], n: int) -> float:
    """Seconds for n steps after one warm-up step (worker start-up is timed separately)."""
    it = iter(batches)
    step(*next(it))
    t0 = time.perf_counter()
    for x, y in itertools.islice(it, n):
        step(x, y)
    return time.perf_counter() - t0


def paired_steps(feeds: dict[str, Feed], n: int) -> dict[str, float]:
    """Seconds for n steps of each feed, taken in turn step by step (after one warm-up step
    each), fetching the batch inside the clock: a load spike on a shared machine then hits
    every feed alike. Only for feeds without worker processes, which would prefetch while
    the other feeds step."""
    its = {name: iter(batches) for name, (_, batches) in feeds.items()}
    for name, (step, _) in feeds.items():
        step(*next(its[name]))
    total = dict.fromkeys(feeds, 0.0)
    for _ in range(n):
        for name, (step, _) in feeds.items():
            t0 = time.perf_counter()
            step(*next(its[name]))
            total[name] += time.perf_counter() - t0
    return total


def in_memory(
    cache: ImageCache, rows: np.ndarray, labels: np.ndarray, spec: InputSpec, bs: int, n: int
):
    """The baseline's batches: normalised float32 tensors made before the clock starts."""
    data = EvalImages(cache, rows, labels, spec.size)
    norm = Normalize(spec)
    loader = make_loader(data, batch_size=bs, shuffle=True, seed=1)
    return [(norm(x), y) for x, y in itertools.islice(itertools.cycle(loader), n + 2)]


def run(ctx: Context) -> dict[str, Any]:
    n_img, size, bs, steps, reps = ctx.pick((400, 96, 32, 6, 2), (2000, 224, 64, 12, 3))
    m = manifest(str(isic_like(n_img, 1024, 768)))
    cfg = load_config(
        None, {"model.name": MODEL, "model.pretrained": False, "model.freeze": "none"}
    )
    model = make_model(cfg)
    spec = input_spec(model, size)
    cache = build_cache(m, spec.cache_size, ctx.work / "cache")
    rows = np.flatnonzero((m["split"] == "train").to_numpy() & cache.ok)
    labels = m["label"].iloc[rows].map({c: i for i, c in enumerate(cfg.data.classes)}).to_numpy()
    augment_cfg = AugmentConfig(enabled=True)
    step = Step(model, spec)
    augmenting_step = Step(model, spec, BatchAugment(augment_cfg, spec.size))
    workers = default_workers(True, torch.device("cpu"))
    per_image = TrainImages(cache, rows, labels, spec.size, augment_cfg)
    whole = EvalImages(cache, rows, labels, cache.size)  # what train_stage feeds BatchAugment
    plain = EvalImages(cache, rows, labels, spec.size)
    memory = in_memory(cache, rows, labels, spec, bs, steps)
    feeds = {  # name: (step, batches for repetition rep)
        "in_memory": (step, lambda _rep: memory),
        "loader_augmented": (
            augmenting_step,
            lambda rep: make_loader(whole, batch_size=bs, shuffle=True, seed=rep),
        ),
        "loader_augmented_workers": (
            step,
            lambda rep: make_loader(
                per_image, batch_size=bs, shuffle=True, seed=rep, num_workers=workers
            ),
        ),
        "loader_plain": (
            step,
            lambda rep: make_loader(plain, batch_size=bs, shuffle=True, seed=rep),
        ),
    }
    best = dict.fromkeys(feeds, float("inf"))
    for rep in range(reps):  # best of all repetitions
        inline = {
            k: (st, f(rep)) for k, (st, f) in feeds.items() if k != "loader_augmented_workers"
        }
        for name, seconds in paired_steps(inline, steps).items():
            best[name] = min(best[name], seconds)
        st, f = feeds["loader_augmented_workers"]
        best["loader_augmented_workers"] = min(
            best["loader_augmented_workers"], timed_steps(st, f(rep), steps)
        )
    images = steps * bs
    return result(
        NAME,
        ctx,
        best["in_memory"],
        best["loader_augmented"],
        TARGET,
        ratio_note="ratio = loader images/s ÷ in-memory images/s (same images, same step)",
        model=MODEL,
        image_size=size,
        batch_size=bs,
        timed_steps=steps,
        images_per_step=bs,
        loader_workers=workers,
        images_per_s={k: round(images / v, 2) for k, v in best.items()},
        ratio_plain_loader=round(best["in_memory"] / best["loader_plain"], 3),
        ratio_augmented_workers=round(best["in_memory"] / best["loader_augmented_workers"], 3),
        augmentation="loader_augmented: batched on the device (skin.train.augment, the default backend);"
        " loader_augmented_workers: per image with torchvision in loader workers",
        torch_threads=torch.get_num_threads(),
    )
