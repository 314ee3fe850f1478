"""epoch_cache: a later epoch read from the uint8 memmap vs decoding every image again."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import Context, best_of, result, timed
from benchmarks.data import isic_like, manifest
from benchmarks.decode import SIZE, plain
from skin.data.imagecache import ImageCache, build_cache
from skin.train.datasets import EvalImages, make_loader

NAME = "epoch_cache"
TARGET = 20.0
CROP = 224
BATCH = 128


def epoch(cache: ImageCache, seed: int = 0) -> int:
    """One shuffled training epoch through the real loader, as training reads it."""
    rows = np.arange(len(cache.images))
    data = EvalImages(cache, rows, np.zeros(len(rows), dtype=np.int64), CROP)
    seen = 0
    for x, _ in make_loader(data, batch_size=BATCH, shuffle=True, seed=seed):
        seen += int(x.shape[0])
    return seen


def in_ram(images: np.ndarray, seed: int = 0) -> int:
    """The ceiling: the same shuffled batches from an array already in RAM."""
    order = np.random.default_rng(seed).permutation(len(images))
    o = (images.shape[1] - CROP) // 2
    seen = 0
    for i in range(0, len(order), BATCH):
        batch = np.sort(order[i : i + BATCH])
        seen += len(np.ascontiguousarray(images[batch, o : o + CROP, o : o + CROP]))
    return seen


def evict(path: Path) -> None:
    """Drop this file's pages from the page cache (a cold read), without touching others'."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def run(ctx: Context) -> dict[str, Any]:
    n = ctx.pick(400, 2000)
    folder = isic_like(n, 1024, 768)
    m = manifest(str(folder))
    root = ctx.work / "cache"

    def decode_again() -> None:
        shutil.rmtree(root / "images", ignore_errors=True)
        build_cache(m, SIZE, root)

    decode_s = best_of(ctx.pick(2, 3), {"decode": decode_again})["decode"]
    cache = build_cache(m, SIZE, root)
    ram = np.array(cache.images)
    times = best_of(ctx.pick(5, 5), {"ours": lambda: epoch(cache), "ram": lambda: in_ram(ram)})
    evict(cache.path / "images.u8")
    cold_s, _ = timed(lambda: epoch(cache))
    plain_s, _ = timed(lambda: plain([folder / k for k in m["key"]]))
    return result(
        NAME,
        ctx,
        decode_s,
        times["ours"],
        TARGET,
        images=n,
        cache_size=SIZE,
        crop=CROP,
        batch_size=BATCH,
        baseline_note="baseline = decoding every image again with our own parallel draft decoder",
        plain_decode_s=round(plain_s, 4),
        ratio_vs_plain_decode=round(plain_s / times["ours"], 1),
        cold_epoch_s=round(cold_s, 4),
        ratio_cold=round(decode_s / cold_s, 1),
        limit_s=round(times["ram"], 4),
        limit_note="the same batches from a uint8 array already in RAM",
        images_per_s={
            "decode_again": round(n / decode_s),
            "cache_epoch": round(n / times["ours"]),
            "cold_cache_epoch": round(n / cold_s),
            "in_ram": round(n / times["ram"]),
        },
    )
