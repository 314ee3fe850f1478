"""Decoded images as shards in a shared store (S3), so machines share one decode of a dataset.

A shared cache is a prefix `<shared.uri>/images/<manifest hash>-<size>-v<format>/` holding:

- `shard-00000.npy` …: uint8 `[rows, S, S, 3]` for rows `[i·R, (i+1)·R)` of the manifest sorted by
  key (the local cache's row order, whatever order the manifest came in), each with
  `shard-00000.json` (its keys, ok mask and errors), written after the array: a shard is complete
  when its JSON exists;
- `keys.json`, `ok.npy`, `errors.csv`, then `meta.json` (count, size, shard_rows, format): written
  last, by `finish`, so a reader never sees a half-built cache.

Shards are built independently (`build_shard`: fetch + decode in RAM, one upload), which is what
lets `skin-prepare` fan them out over Prefect workers or a Dask cluster. A machine then either
mirrors the whole cache into its local memmap (`mirror`), or, when its disk cannot hold it,
streams it (`open_stream`): `ShardedImages` is an array whose rows load shard by shard through
a size-bounded local cache, and `skin.train.datasets.EpochSampler(blocks=…)` orders each epoch so that a
few shards at a time are in use. Nothing here ever deletes or overwrites a source object.
`image_cache` is the policy that picks between a local decode, a mirror and a stream.
"""

from __future__ import annotations

import io
import json
import logging
import os
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from filelock import FileLock

from skin.base.config import SharedConfig
from skin.base.progress import Factory as Progress
from skin.base.progress import silent
from skin.data.fetch import Fetcher
from skin.data.imagecache import (
    FORMAT,
    ImageCache,
    build_cache,
    build_once,
    cache_dir,
    cpu_workers,
    decode_rows,
    images_hash,
    in_key_order,
    npy_bytes,
    objects_dir,
    open_cache,
    read_meta,
    write_meta,
)
from skin.data.storage import LocalStore, join_uri, open_store

log = logging.getLogger(__name__)


def shards_uri(shared_uri: str, manifest: pd.DataFrame, size: int) -> str:
    return join_uri(shared_uri, "images", f"{images_hash(manifest)}-{size}-v{FORMAT}")


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def shard_count(n: int, shard_rows: int) -> int:
    return -(-n // shard_rows)


@dataclass(frozen=True)
class ShardInfo:
    index: int
    rows: int
    bad: int
    reused: bool


def is_complete(uri: str) -> bool:
    return open_store(uri).exists("meta.json")


def build_shard(
    manifest: pd.DataFrame,
    size: int,
    index: int,
    shard_rows: int,
    uri: str,
    fetch_root: str | Path,
    *,
    decode_workers: int | None = None,
) -> ShardInfo:
    """Fetch and decode one shard's rows (of the manifest in key order) in RAM and upload them with
    their keys, ok mask and errors. A shard already complete in the store is left as it is."""
    store = open_store(uri)
    name = shard_name(index)
    if store.exists(f"{name}.json"):
        done = json.loads(store.get(f"{name}.json"))
        return ShardInfo(index, len(done["ok"]), len(done["errors"]), reused=True)
    lo, hi = index * shard_rows, min(len(manifest), (index + 1) * shard_rows)
    if lo >= hi:
        raise ValueError(f"shard {index} is past the end of a {len(manifest)}-row manifest")
    part = in_key_order(manifest).iloc[lo:hi].reset_index(drop=True)
    images = np.zeros((hi - lo, size, size, 3), dtype=np.uint8)
    fetcher = Fetcher(objects_dir(fetch_root))
    ok, errors = decode_rows(part, size, images, fetcher, decode_workers or cpu_workers())
    store.put(f"{name}.npy", npy_bytes(images))
    _put_part(store, name, part["key"].tolist(), ok, errors)
    return ShardInfo(index, hi - lo, len(errors), reused=False)


def _put_part(
    store: Any, name: str, keys: list[str], ok: np.ndarray, errors: list[tuple[str, str]]
) -> None:
    part = {"keys": keys, "ok": ok.tolist(), "errors": errors}
    store.put(f"{name}.json", json.dumps(part).encode())


def finish(uri: str, n: int, size: int, shard_rows: int) -> dict[str, Any]:
    """Gather every shard's keys, ok mask and errors and write meta.json last: the cache is
    complete."""
    store = open_store(uri)
    if store.exists("meta.json"):  # complete already: never rewritten
        return json.loads(store.get("meta.json"))
    keys: list[str] = []
    ok, errors = np.zeros(n, dtype=bool), []
    for i in range(shard_count(n, shard_rows)):
        name = f"{shard_name(i)}.json"
        if not store.exists(name):
            raise FileNotFoundError(f"{uri}: shard {i} was never built; build it, then finish")
        part = json.loads(store.get(name))
        ok[i * shard_rows : i * shard_rows + len(part["ok"])] = part["ok"]
        keys += part["keys"]
        errors += [tuple(e) for e in part["errors"]]
    if len(keys) != n or keys != sorted(keys):
        raise ValueError(f"{uri}: the shards hold {len(keys)} keys, not {n} in key order")
    return write_meta(store, size, keys, ok, errors, shard_rows=shard_rows)


def publish_shards(
    manifest: pd.DataFrame,
    size: int,
    uri: str,
    shard_rows: int,
    fetch_root: str | Path,
    *,
    run: Callable[[Callable[[int], ShardInfo], Iterable[int]], Iterable[ShardInfo]] = map,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Build every missing shard (with `run`, a map: serial here, Prefect or Dask in flows) and
    finish the cache."""
    if len(manifest) == 0:
        raise ValueError("empty manifest: nothing to cache")

    def one(i: int) -> ShardInfo:
        return build_shard(manifest, size, i, shard_rows, uri, fetch_root)

    for info in run(one, range(shard_count(len(manifest), shard_rows))):
        if progress:
            progress(info.rows)
    return finish(uri, len(manifest), size, shard_rows)


def publish_cache(cache: ImageCache, uri: str, shard_rows: int) -> dict[str, Any]:
    """Upload a cache already decoded on this machine as shards (no second decode): its rows are
    in key order already, the shards' order."""
    store = open_store(uri)
    n = len(cache.images)
    failed = dict(zip(cache.errors["key"], cache.errors["error"], strict=True))
    for i in range(shard_count(n, shard_rows)):
        name = shard_name(i)
        if store.exists(f"{name}.json"):
            continue
        lo, hi = i * shard_rows, min(n, (i + 1) * shard_rows)
        store.put(f"{name}.npy", npy_bytes(cache.images[lo:hi]))
        keys = cache.keys[lo:hi].tolist()
        _put_part(store, name, keys, cache.ok[lo:hi], [(k, failed[k]) for k in keys if k in failed])
    return finish(uri, n, cache.size, shard_rows)


def _read_meta(uri: str) -> tuple[dict[str, Any], np.ndarray, pd.DataFrame, list[str]]:
    store = open_store(uri)
    if not store.exists("meta.json"):
        raise FileNotFoundError(f"no complete shared image cache at {uri} (meta.json missing)")
    return read_meta(store)


def mirror(uri: str, local: Path) -> ImageCache:
    """Copy a shared cache into a local memmap cache (the same layout `build_cache` writes)."""

    def fill(folder: Path) -> None:
        meta, ok, errors, keys = _read_meta(uri)
        n, s, r = meta["count"], meta["size"], meta["shard_rows"]
        store = open_store(uri)
        images = np.memmap(folder / "images.u8", dtype=np.uint8, mode="w+", shape=(n, s, s, 3))
        for i in range(shard_count(n, r)):
            images[i * r : (i + 1) * r] = np.load(io.BytesIO(store.get(f"{shard_name(i)}.npy")))
        images.flush()
        errors_list = list(errors.itertuples(index=False, name=None))
        write_meta(LocalStore(folder), s, keys, ok, errors_list)

    return build_once(local, fill)


class ShardCache:
    """Shards on local disk, at most `max_bytes` of them: least recently used ones are deleted.

    Safe across the loader's worker processes: each shard downloads once under a file lock to a
    temp name and is renamed into place; deleting a shard another process has memory-mapped is
    harmless on POSIX (the mapping keeps its pages).
    """

    def __init__(self, uri: str, folder: Path, max_bytes: int, keep_open: int = 1) -> None:
        self.uri, self.folder, self.max_bytes, self.keep_open = uri, folder, max_bytes, keep_open
        self.folder.mkdir(parents=True, exist_ok=True)
        self._open: OrderedDict[int, np.ndarray] = OrderedDict()
        self.downloads = 0

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_open": OrderedDict()}

    def path(self, index: int) -> Path:
        return self.folder / f"{shard_name(index)}.npy"

    def get(self, index: int) -> np.ndarray:
        if index in self._open:
            self._open.move_to_end(index)
            return self._open[index]
        path = self.path(index)
        if not path.exists():
            with FileLock(str(path) + ".lock"):
                if not path.exists():
                    data = open_store(self.uri).get(f"{shard_name(index)}.npy")
                    self._evict(len(data), keep=index)
                    tmp = path.with_suffix(f".{uuid.uuid4().hex[:8]}.tmp")
                    tmp.write_bytes(data)
                    tmp.replace(path)
                    self.downloads += 1
        os.utime(path)  # recency for eviction
        array = np.load(path, mmap_mode="r")
        self._open[index] = array
        while len(self._open) > self.keep_open:
            self._open.popitem(last=False)
        return array

    def _evict(self, incoming: int, keep: int) -> None:
        files = [p for p in self.folder.glob("shard-*.npy") if p != self.path(keep)]
        used = sum(p.stat().st_size for p in files) + incoming
        for p in sorted(files, key=lambda p: p.stat().st_mtime):
            if used <= self.max_bytes:
                break
            used -= p.stat().st_size
            p.unlink(missing_ok=True)
            # A mapping keeps a deleted file's blocks on disk: let go of ours at once. (Another
            # process holds at most `keep_open` more, so the budget may be exceeded by that.)
            self._open.pop(int(p.stem.split("-")[1]), None)
            log.debug("evicted %s from the shard cache", p.name)

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.glob("shard-*.npy"))


class ShardedImages:
    """Array-like `[N, S, S, 3]` uint8 over a shared cache's shards, read on demand."""

    dtype = np.dtype(np.uint8)

    def __init__(self, cache: ShardCache, count: int, size: int, shard_rows: int) -> None:
        self.cache, self.count, self.size, self.shard_rows = cache, count, size, shard_rows

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.count, self.size, self.size, 3)

    def __len__(self) -> int:
        return self.count

    def blocks(self, rows: np.ndarray) -> np.ndarray:
        """The shard holding each row (for a shard-aware sampling order)."""
        return np.asarray(rows) // self.shard_rows

    def __getitem__(self, rows: int | np.ndarray | slice) -> np.ndarray:
        if isinstance(rows, (int, np.integer)):
            r = int(rows)
            return np.array(self.cache.get(r // self.shard_rows)[r % self.shard_rows])
        if isinstance(rows, slice):
            rows = np.arange(self.count)[rows]
        rows = np.asarray(rows)
        out = np.empty((len(rows), self.size, self.size, 3), dtype=np.uint8)
        shard = rows // self.shard_rows
        for s in np.unique(shard):
            where = np.flatnonzero(shard == s)
            out[where] = self.cache.get(int(s))[rows[where] % self.shard_rows]
        return out


def open_stream(uri: str, local: Path, max_bytes: int) -> ImageCache:
    """A shared cache read on demand: at most `max_bytes` of shards on this machine's disk."""
    meta, ok, errors, keys = _read_meta(uri)
    shard_bytes = meta["shard_rows"] * meta["size"] ** 2 * 3
    if max_bytes < 2 * shard_bytes:
        raise ValueError(
            f"shared.local_cache_gb allows {max_bytes / 1e9:.3f} GB, less than two shards"
            f" ({2 * shard_bytes / 1e9:.3f} GB): raise it or lower shared.shard_rows"
        )
    images = ShardedImages(
        ShardCache(uri, local / "shards", max_bytes),
        meta["count"],
        meta["size"],
        meta["shard_rows"],
    )
    local.mkdir(parents=True, exist_ok=True)
    rows = np.asarray(keys, dtype=object)
    return ImageCache(local, images, ok, errors, rows)  # type: ignore[arg-type]


def image_cache(
    manifest: pd.DataFrame,
    size: int,
    root: Path,
    shared: SharedConfig,
    progress: Progress = silent,
) -> ImageCache:
    """This machine's decoded images under the cache `root`: built here, or (with `shared.uri`)
    taken from the shared shards, built there first if nobody has yet, then mirrored locally or
    streamed. Its rows are in key order: map manifest rows with `rows_for`."""
    if shared.uri is None:
        return build_cache(
            manifest, size, root, progress=progress("decoding images", len(manifest))
        )
    uri = shards_uri(shared.uri, manifest, size)
    local = cache_dir(root, manifest, size)
    if not is_complete(uri):
        if (local / "meta.json").exists():  # decoded here already: upload, don't decode again
            publish_cache(open_cache(local), uri, shared.shard_rows)
        else:
            publish_shards(
                manifest,
                size,
                uri,
                shared.shard_rows,
                root,
                progress=progress("decoding images", len(manifest)),
            )
    if shared.stream:
        return open_stream(uri, root / "stream" / local.name, int(shared.local_cache_gb * 1e9))
    return mirror(uri, local)
