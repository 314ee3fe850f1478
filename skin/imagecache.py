"""Decode once: every manifest image fetched in parallel, decoded to uint8 and kept in a memory map.

The notebook held every image as a float32 tensor in RAM (25,331 ISIC images at 224 px ≈ 15 GB).
This cache is uint8 (a quarter of that), lives on disk, is read through the page cache, and is
keyed by the manifest hash and the decoded size, so every epoch and every later run reads it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock

from skin.images import ImageDecodeError, decode
from skin.manifest import manifest_hash
from skin.storage import StorageError, open_store

log = logging.getLogger(__name__)
FORMAT = 1


@dataclass
class ImageCache:
    """Decoded images of one manifest at one size: `images[i]` is the manifest's row i."""

    path: Path
    images: np.ndarray  # memmap uint8 [N, S, S, 3]
    ok: np.ndarray  # bool [N]: False where the image could not be fetched or decoded
    errors: pd.DataFrame  # key, error

    @property
    def size(self) -> int:
        return int(self.images.shape[1])


def cache_dir(root: str | Path, manifest: pd.DataFrame, size: int) -> Path:
    return Path(root) / "images" / f"{manifest_hash(manifest)}-{size}"


def open_cache(path: Path) -> ImageCache:
    meta = json.loads((path / "meta.json").read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"image cache {path} has format {meta.get('format')}, expected {FORMAT}")
    n, s = meta["count"], meta["size"]
    images = np.memmap(path / "images.u8", dtype=np.uint8, mode="r", shape=(n, s, s, 3))
    ok = np.load(path / "ok.npy")
    return ImageCache(path, images, ok, pd.read_csv(path / "errors.csv"))


def build_cache(
    manifest: pd.DataFrame,
    size: int,
    root: str | Path,
    *,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> ImageCache:
    """Fetch and decode every manifest row once (threads: I/O and Pillow release the GIL).

    Built in a private temp folder and renamed into place, under a file lock, so two runs on the
    same dataset never see a half-written cache. Undecodable images are recorded, not fatal.
    """
    final = cache_dir(root, manifest, size)
    if (final / "meta.json").exists():
        return open_cache(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if (final / "meta.json").exists():
            return open_cache(final)
        tmp = final.parent / f".{final.name}.{uuid.uuid4().hex[:8]}.tmp"
        tmp.mkdir()
        try:
            _fill(manifest, size, tmp, workers, progress)
            tmp.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return open_cache(final)


def _fill(
    manifest: pd.DataFrame,
    size: int,
    folder: Path,
    workers: int | None,
    progress: Callable[[int], None] | None,
) -> None:
    n = len(manifest)
    if n == 0:
        raise ValueError("empty manifest: nothing to cache")
    images = np.memmap(folder / "images.u8", dtype=np.uint8, mode="w+", shape=(n, size, size, 3))
    ok = np.zeros(n, dtype=bool)
    errors: list[tuple[str, str]] = []
    stores = {src: open_store(src) for src in manifest["source"].unique()}
    keys, sources = manifest["key"].tolist(), manifest["source"].tolist()

    def load(i: int) -> tuple[int, str | None]:
        try:
            images[i] = decode(stores[sources[i]].get(keys[i]), size)
        except (ImageDecodeError, StorageError) as err:
            return i, str(err)
        return i, None

    workers = workers or min(32, (os.cpu_count() or 2) * 4)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, error in pool.map(load, range(n)):
            if error is None:
                ok[i] = True
            else:
                errors.append((keys[i], error))
                log.warning("skipping %s: %s", keys[i], error)
            if progress:
                progress(1)
    images.flush()
    np.save(folder / "ok.npy", ok)
    pd.DataFrame(errors, columns=["key", "error"]).to_csv(folder / "errors.csv", index=False)
    meta = {"format": FORMAT, "count": n, "size": size, "bad": len(errors)}
    (folder / "meta.json").write_text(json.dumps(meta))
