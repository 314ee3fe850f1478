"""decode: 1024×768 ISIC-like JPEGs → 256 px; plain PIL per image vs the parallel draft decoder."""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.common import Context, best_of, result
from benchmarks.data import isic_like, manifest
from skin.data.imagecache import build_cache, cpu_workers
from skin.data.images import decode_file

NAME = "decode"
TARGET = 3.0
SIZE = 256


def plain(paths: list[Path], size: int = SIZE) -> None:
    """The notebook's way: full-resolution decode, convert, resize, one image after another."""
    for path in paths:
        np.asarray(Image.open(path).convert("RGB").resize((size, size)))


def ours(m: Any, root: Path, workers: int | None = None) -> None:
    shutil.rmtree(root, ignore_errors=True)
    build_cache(m, SIZE, root, decode_workers=workers)


_memmap: np.ndarray | None = None


def _open(path: str, n: int) -> None:
    global _memmap
    _memmap = np.memmap(path, dtype=np.uint8, mode="r+", shape=(n, SIZE, SIZE, 3))


def _decode_rows(rows: list[tuple[int, str]]) -> None:
    assert _memmap is not None
    for i, path in rows:
        _memmap[i] = decode_file(path, SIZE)
    _memmap.flush()


def processes(paths: list[Path], folder: Path) -> None:
    """The alternative measured and not taken: a process pool writing into the same memmap."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "images.u8"
    n = len(paths)
    np.memmap(target, dtype=np.uint8, mode="w+", shape=(n, SIZE, SIZE, 3)).flush()
    jobs = [(i, str(p)) for i, p in enumerate(paths)]
    chunks = [jobs[i : i + 32] for i in range(0, n, 32)]
    ctx = mp.get_context("fork")  # the cheapest start; no threads of ours are running here
    with ProcessPoolExecutor(cpu_workers(), ctx, _open, (str(target), n)) as pool:
        list(pool.map(_decode_rows, chunks))
    target.unlink()


def run(ctx: Context) -> dict[str, Any]:
    n = ctx.pick(400, 2000)
    folder = isic_like(n, 1024, 768)
    m = manifest(str(folder))
    paths = [folder / k for k in m["key"]]
    for p in paths:  # every contender reads from the page cache
        p.read_bytes()
    root = ctx.work / "cache"
    times = best_of(
        ctx.pick(2, 3),
        {
            "plain": lambda: plain(paths),
            "ours": lambda: ours(m, root),
            "ours_1_thread": lambda: ours(m, root, 1),
            "process_pool": lambda: processes(paths, ctx.work / "procs"),
        },
    )
    cache = build_cache(m, SIZE, root)
    same = all(
        np.array_equal(cache.images[i], decode_file(paths[i], SIZE)) for i in range(0, n, 37)
    )
    return result(
        NAME,
        ctx,
        times["plain"],
        times["ours"],
        TARGET,
        images=n,
        source_size="1024x768",
        decoded_size=SIZE,
        decode_threads=cpu_workers(),
        images_per_s={k: round(n / v, 1) for k, v in times.items()},
        seconds=({k: round(v, 4) for k, v in times.items()}),
        threads_vs_processes=round(times["process_pool"] / times["ours"], 3),
        cache_matches_per_image_decode=bool(same),
        cpu_count=os.cpu_count(),
    )
