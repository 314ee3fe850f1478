"""Shared image shards in S3 (moto): built once, mirrored or streamed, equal to a local decode."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from skin.base.config import SharedConfig
from skin.data import manifest as mf
from skin.data.imagecache import build_cache
from skin.data.shards import (
    ShardedImages,
    ShardInfo,
    build_shard,
    is_complete,
    mirror,
    open_stream,
    publish_cache,
    publish_shards,
    shards_uri,
)
from skin.train.datasets import EpochSampler
from tests.helpers import (
    assert_each_key_reads_its_own_image,
    make_manifest,
    plain_spec,
    reordered,
)

SIZE = 36


@pytest.fixture
def data_with_a_broken_image(tmp_path: Path, sample_data: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(sample_data, data)
    (data / "MEL" / "broken.jpg").write_bytes(b"not a jpeg at all")
    return data


def shard_bytes(rows: int) -> int:
    return rows * SIZE * SIZE * 3


@pytest.mark.slow  # tens of seconds: out of `make test-fast`, still in `make test`
@pytest.mark.server
def test_shards_mirror_and_stream_equal_a_local_decode(
    tmp_path: Path, data_with_a_broken_image: Path, bucket: str, s3_client
) -> None:
    uri, _ = make_manifest(tmp_path, data_with_a_broken_image)
    m = mf.read(uri)
    local = build_cache(m, SIZE, tmp_path / "local")
    assert not local.ok.all(), "the broken image is recorded, not fatal"
    target = shards_uri(f"s3://{bucket}/shared", m, SIZE)
    calls: list[ShardInfo] = []

    def serial(fn, items):
        for i in items:
            calls.append(fn(i))
            yield calls[-1]

    meta = publish_shards(m, SIZE, target, 64, tmp_path / "fetch", run=serial)
    shards = -(-len(m) // 64)
    assert meta["count"] == len(m) and meta["bad"] == 1 and is_complete(target)
    assert [c.reused for c in calls] == [False] * shards
    calls.clear()
    publish_shards(m, SIZE, target, 64, tmp_path / "fetch", run=serial)
    assert [c.reused for c in calls] == [True] * shards, "a second build reuses every shard"

    copy = mirror(target, tmp_path / "machine-b" / "cache")
    assert np.array_equal(np.asarray(copy.images), np.asarray(local.images))
    assert np.array_equal(copy.ok, local.ok)
    assert list(copy.errors["key"]) == list(local.errors["key"])

    limit = 2 * shard_bytes(64) + 1000  # two shards on disk at most
    stream = open_stream(target, tmp_path / "machine-c", limit)
    rng = np.random.default_rng(0)
    for _ in range(4):
        rows = rng.permutation(len(m))[:50]
        assert np.array_equal(stream.images[rows], local.images[rows])
        assert stream.images.cache.disk_bytes() <= limit
    assert np.array_equal(stream.images[7], local.images[7])
    assert np.array_equal(stream.ok, local.ok)

    # An already-decoded local cache is uploaded as it is, to the same bytes.
    other = shards_uri(f"s3://{bucket}/other", m, SIZE)
    publish_cache(local, other, 64)
    again = mirror(other, tmp_path / "machine-d" / "cache")
    assert np.array_equal(np.asarray(again.images), np.asarray(local.images))
    assert list(again.errors["key"]) == list(local.errors["key"])


@pytest.mark.server
def test_open_stream_refuses_a_disk_budget_below_two_shards(
    tmp_path: Path, sample_data: Path, bucket: str
) -> None:
    uri, _ = make_manifest(tmp_path, sample_data)
    m = mf.read(uri)
    target = shards_uri(f"s3://{bucket}/shared", m, SIZE)
    build_shard(m, SIZE, 0, 500, target, tmp_path / "fetch")
    with pytest.raises(FileNotFoundError, match=r"meta\.json"):
        open_stream(target, tmp_path / "s", 10**9)
    publish_shards(m, SIZE, target, 500, tmp_path / "fetch")
    with pytest.raises(ValueError, match="local_cache_gb"):
        open_stream(target, tmp_path / "s", shard_bytes(500))


@pytest.mark.parametrize("decoded_first", [False, True])
def test_shards_built_from_one_row_order_serve_each_key_in_another(
    tmp_path: Path, sample_data: Path, decoded_first: bool
) -> None:
    from skin.train.feeds import index_splits

    shared = {"shared.uri": str(tmp_path / "shared"), "shared.shard_rows": 32}
    uri, cfg_a = make_manifest(tmp_path / "a", sample_data, **shared)
    m, spec = mf.read(uri), plain_spec(SIZE)
    if decoded_first:  # machine a decoded alone, then uploads its cache as it is
        index_splits(m, cfg_a.model_copy(update={"shared": SharedConfig()}), spec)
    else:  # one shard built from one row order, the rest from another
        target = shards_uri(str(tmp_path / "shared"), m, SIZE)
        build_shard(reordered(m, "reversed"), SIZE, 0, 32, target, tmp_path / "f")
    a = index_splits(reordered(m, "shuffled"), cfg_a, spec)
    assert_each_key_reads_its_own_image(a, reordered(m, "shuffled"), sample_data)

    _, cfg_b = make_manifest(tmp_path / "b", sample_data, **shared)
    b = index_splits(reordered(m, "reversed"), cfg_b, spec)  # mirrored
    assert_each_key_reads_its_own_image(b, reordered(m, "reversed"), sample_data)
    budget = {"shared.stream": True, "shared.local_cache_gb": 3 * shard_bytes(32) / 1e9}
    _, cfg_c = make_manifest(tmp_path / "c", sample_data, **shared, **budget)
    c = index_splits(reordered(m, "reversed"), cfg_c, spec)  # streamed
    assert isinstance(c.cache.images, ShardedImages)
    assert_each_key_reads_its_own_image(c, reordered(m, "reversed"), sample_data)


@pytest.mark.parametrize("weighted", [False, True])
def test_shard_aware_order_reads_each_shard_in_one_window(weighted: bool) -> None:
    n, rows, window = 1000, 100, 2
    blocks = np.arange(n) // rows
    weights = np.where(blocks % 2 == 0, 1.0, 3.0) if weighted else None

    def order(epoch: int, rank: int = 0, world: int = 1) -> np.ndarray:
        s = EpochSampler(n, seed=3, epoch=epoch, shuffle=True, weights=weights, rank=rank,
                         world=world, blocks=blocks, window=window)  # fmt: skip
        return np.array(list(s))

    a = order(1)
    assert np.array_equal(a, order(1)) and not np.array_equal(a, order(2))
    if not weighted:
        assert np.array_equal(np.sort(a), np.arange(n)), "each sample once per epoch"
    windows = []  # the set of shards between consecutive window boundaries
    seen: set[int] = set()
    for b in blocks[a]:
        if b not in seen and len(seen) == window:
            windows.append(seen)
            seen = set()
        seen.add(int(b))
    windows.append(seen)
    flat = [b for w in windows for b in w]
    assert len(flat) == len(set(flat)), "no shard comes back once its window has passed"
    assert not np.array_equal(blocks[a][:rows], np.full(rows, blocks[a][0])), "mixed in a window"
    both = np.empty(n, dtype=int)
    both[0::2], both[1::2] = order(1, 0, 2), order(1, 1, 2)
    assert np.array_equal(both, a), "ranks split the same global order"


@pytest.mark.server
@pytest.mark.slow
def test_a_second_machine_streams_the_shared_shards_without_the_source(
    tmp_path: Path, sample_data: Path, bucket: str
) -> None:
    from skin.evaluate.stage import evaluate_stage
    from skin.track.tracking import NullTracker
    from skin.train.stage import train_stage

    data = tmp_path / "data"
    shutil.copytree(sample_data, data)
    shared = {"shared.uri": f"s3://{bucket}/shared", "shared.shard_rows": 32}
    uri, cfg_a = make_manifest(tmp_path / "a", data, **shared, **{"train.epochs": 1})
    train_stage(uri, cfg_a, NullTracker("machine-a"))  # decodes and publishes the shards
    shutil.rmtree(data)  # machine b cannot read the source images at all

    limit_gb = 3 * 32 * SIZE * SIZE * 3 / 1e9  # three shards of the ~10 on disk at once
    extra = {**shared, "shared.stream": True, "shared.local_cache_gb": limit_gb,
             "shared.shuffle_window": 2, "train.epochs": 8}  # fmt: skip
    _, cfg_b = make_manifest(tmp_path / "b", sample_data, **extra)
    out = train_stage(uri, cfg_b, NullTracker("machine-b"))
    shards = list((tmp_path / "b" / "work" / "cache" / "stream").rglob("shard-*.npy"))
    assert 0 < sum(p.stat().st_size for p in shards) <= limit_gb * 1e9
    assert not (tmp_path / "b" / "work" / "cache" / "objects").exists(), "nothing re-fetched"
    m = evaluate_stage(uri, out.best_checkpoint, cfg_b, NullTracker("machine-b")).metrics
    assert m["test_balanced_accuracy"] > 0.4, f"chance is 0.125: {m['test_balanced_accuracy']}"
