"""Decode once: every manifest image fetched in parallel, decoded to uint8 and kept in a memory map.

The notebook held every image as a float32 tensor in RAM (25,331 ISIC images at 224 px ≈ 15 GB).
This cache is uint8 (a quarter of that), lives on disk, is read through the page cache, and is
keyed by the manifest hash and the decoded size, so every epoch and every later run reads it.
That hash ignores row order, so the cache does too: its rows are the manifest's keys in sorted
order, the keys are stored with it, and readers map their rows to cache rows by key (`rows_for`).
Remote objects land first in a fetch cache named by fingerprint (`<root>/objects`), so a new
manifest or another decode size never downloads an object twice.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from queue import SimpleQueue
from typing import Any

import numpy as np
import pandas as pd
from filelock import FileLock

from skin.data.fetch import Fetched, Fetcher
from skin.data.images import ImageDecodeError, decode_file
from skin.data.manifest import frame_hash
from skin.data.storage import LocalStore, Store, open_store

log = logging.getLogger(__name__)
# 2: centre square resampled in one pass (box resize) instead of resize-then-crop.
# 3: rows in key order with the keys stored (2 held manifest rows by position, so the same
#    manifest in another row order read other rows' images).
FORMAT = 3


@dataclass
class ImageCache:
    """Decoded images of one manifest at one size: `images[i]` is the image of `keys[i]`."""

    path: Path
    images: np.ndarray  # memmap uint8 [N, S, S, 3]
    ok: np.ndarray  # bool [N]: False where the image could not be fetched or decoded
    errors: pd.DataFrame  # key, error
    keys: np.ndarray  # str [N], sorted: the key of each row

    @property
    def size(self) -> int:
        return int(self.images.shape[1])

    def rows_for(self, keys: Iterable[str]) -> np.ndarray:
        """The cache row of each key, in the order given; a key the cache lacks is an error."""
        keys = list(keys)
        rows = pd.Index(self.keys).get_indexer(keys)
        if (rows < 0).any():
            missing = [k for k, r in zip(keys, rows, strict=True) if r < 0]
            raise ValueError(
                f"image cache {self.path} has no image for {len(missing)} of {len(keys)} keys"
                f" (first: {missing[:3]}): it was built from another manifest"
            )
        return rows


def in_key_order(manifest: pd.DataFrame) -> pd.DataFrame:
    """The manifest's rows sorted by key: the one row order of every cache built from it."""
    twice = manifest["key"][manifest["key"].duplicated()]
    if len(twice):
        raise ValueError(f"manifest has {len(twice)} duplicate keys (first: {twice.iloc[0]!r})")
    return manifest.sort_values("key", kind="stable", ignore_index=True)


def cpu_workers() -> int:
    """The cores this process may use: one decode thread each (threads ≈ processes, measured)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def images_hash(manifest: pd.DataFrame) -> str:
    """Which images a cache holds (keys and contents), whatever their splits: cross-validation
    folds and a re-balanced manifest share the decoded images of the manifest they came from."""
    return frame_hash(manifest[["key", "fingerprint"]])


def cache_dir(root: str | Path, manifest: pd.DataFrame, size: int) -> Path:
    return Path(root) / "images" / f"{images_hash(manifest)}-{size}-v{FORMAT}"


def objects_dir(root: str | Path) -> Path:
    """The fetch cache shared by every manifest and size under one cache root."""
    return Path(root) / "objects"


def open_cache(path: Path) -> ImageCache:
    meta, ok, errors, keys = read_meta(LocalStore(path))
    n, s = meta["count"], meta["size"]
    images = np.memmap(path / "images.u8", dtype=np.uint8, mode="r", shape=(n, s, s, 3))
    return ImageCache(path, images, ok, errors, np.asarray(keys, dtype=object))


def build_cache(
    manifest: pd.DataFrame,
    size: int,
    root: str | Path,
    *,
    workers: int | None = None,
    decode_workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> ImageCache:
    """Fetch (`workers` threads, I/O) and decode (`decode_workers` threads, one per core: Pillow
    releases the GIL) every manifest row once, in key order; decoding starts as each object lands.

    Built in a private temp folder and renamed into place, under a file lock, so two runs on the
    same dataset never see a half-written cache. Unfetchable or undecodable images are
    recorded in `errors`, not fatal.
    """

    def fill(folder: Path) -> None:
        fetcher = Fetcher(objects_dir(root), workers)
        ordered = in_key_order(manifest)
        _fill(ordered, size, folder, fetcher, decode_workers or cpu_workers(), progress)

    return build_once(cache_dir(root, manifest, size), fill)


def build_once(final: Path, fill: Callable[[Path], None]) -> ImageCache:
    """Open the cache at `final`, or have `fill` write one into a private temp folder that is
    then renamed into place, under a file lock: concurrent builders never see half a cache."""
    if (final / "meta.json").exists():
        return open_cache(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if (final / "meta.json").exists():
            return open_cache(final)
        tmp = final.parent / f".{final.name}.{uuid.uuid4().hex[:8]}.tmp"
        tmp.mkdir()
        try:
            fill(tmp)
            tmp.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return open_cache(final)


def fetch_rows(manifest: pd.DataFrame, fetcher: Fetcher) -> Iterator[tuple[int, Fetched]]:
    """(manifest row, fetched object) for every row, source by source, as objects arrive."""
    keys = manifest["key"].to_numpy()
    fps = manifest["fingerprint"].astype(str).to_numpy()
    sources = manifest["source"].to_numpy()
    for source in pd.unique(sources):
        rows = np.flatnonzero(sources == source)
        got = fetcher.fetch(open_store(str(source)), keys[rows].tolist(), fps[rows].tolist())
        for item in got:
            yield int(rows[item.index]), item


def _decode_into(images: np.ndarray, row: int, path: Path, size: int) -> tuple[int, str | None]:
    try:
        images[row] = decode_file(path, size)
    except ImageDecodeError as err:
        return row, str(err)
    return row, None


def _fill(
    manifest: pd.DataFrame,
    size: int,
    folder: Path,
    fetcher: Fetcher,
    decode_workers: int,
    progress: Callable[[int], None] | None,
) -> None:
    n = len(manifest)
    if n == 0:
        raise ValueError("empty manifest: nothing to cache")
    images = np.memmap(folder / "images.u8", dtype=np.uint8, mode="w+", shape=(n, size, size, 3))
    ok, errors = decode_rows(manifest, size, images, fetcher, decode_workers, progress)
    images.flush()
    write_meta(LocalStore(folder), size, manifest["key"].tolist(), ok, errors)
    log.info("image cache %s: %s", folder.name, fetcher.stats)


def decode_rows(
    manifest: pd.DataFrame,
    size: int,
    images: np.ndarray,
    fetcher: Fetcher,
    decode_workers: int,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Fetch and decode every row of `manifest` into `images[row]` (a memmap or an array in RAM):
    the ok mask and the (key, error) of each image that could not be had."""
    n = len(manifest)
    ok = np.zeros(n, dtype=bool)
    errors: dict[int, str] = {}
    keys = manifest["key"].tolist()

    def settle(row: int, error: str | None) -> None:
        if error is None:
            ok[row] = True
        else:
            errors[row] = error
            log.warning("skipping %s: %s", keys[row], error)
        if progress:
            progress(1)

    done: SimpleQueue[Future[tuple[int, str | None]]] = SimpleQueue()
    pending = 0
    with ThreadPoolExecutor(max_workers=decode_workers) as decoder:
        for row, item in fetch_rows(manifest, fetcher):
            if item.path is None:
                settle(row, item.error)
                continue
            decoder.submit(_decode_into, images, row, item.path, size).add_done_callback(done.put)
            pending += 1
            while not done.empty():
                settle(*done.get().result())
                pending -= 1
        for _ in range(pending):
            settle(*done.get().result())
    return ok, [(keys[r], e) for r, e in sorted(errors.items())]


def write_meta(
    store: Store,
    size: int,
    keys: list[str],
    ok: np.ndarray,
    errors: list[tuple[str, str]],
    **extra: int,
) -> dict[str, Any]:
    """Everything beside the images (whose rows are `keys`, sorted), local or shared; meta.json
    last, so a reader never sees half a cache."""
    if keys != sorted(keys):
        raise ValueError(f"{store.uri}: cache rows must be in key order")
    store.put("keys.json", json.dumps(keys).encode())
    store.put("ok.npy", npy_bytes(ok))
    table = pd.DataFrame(errors, columns=["key", "error"]).to_csv(index=False)
    store.put("errors.csv", table.encode())
    meta = {"format": FORMAT, "count": len(keys), "size": size, **extra, "bad": len(errors)}
    store.put("meta.json", json.dumps(meta).encode())
    return meta


def read_meta(store: Store) -> tuple[dict[str, Any], np.ndarray, pd.DataFrame, list[str]]:
    """What `write_meta` wrote: meta.json (its format checked), ok mask, errors and row keys."""
    meta = json.loads(store.get("meta.json"))
    if meta.get("format") != FORMAT:
        raise ValueError(
            f"image cache {store.uri} has format {meta.get('format')}, expected {FORMAT}"
        )
    keys = json.loads(store.get("keys.json"))
    if len(keys) != meta["count"]:
        raise ValueError(
            f"image cache {store.uri} holds {meta['count']} images but {len(keys)} keys: rebuild it"
        )
    ok = np.load(io.BytesIO(store.get("ok.npy")))
    return meta, ok, pd.read_csv(io.BytesIO(store.get("errors.csv"))), keys


def npy_bytes(array: np.ndarray) -> bytes:
    """An array as the bytes of a .npy file (no pickles)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()
