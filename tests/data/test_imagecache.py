"""The decoded-image cache: equal to per-image decoding, fed by the fetch cache, bad images marked."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from benchmarks.proxy import DelayProxy
from skin.base.config import PipelineConfig
from skin.data.imagecache import (
    FORMAT,
    ImageCache,
    build_cache,
    in_key_order,
    objects_dir,
    read_meta,
    write_meta,
)
from skin.data.images import decode
from skin.train.feeds import index_splits
from tests.helpers import (
    SIZE,
    assert_each_key_reads_its_own_image,
    cache_manifest,
    plain_spec,
    reordered,
    with_splits,
    write_data,
)


def test_cache_equals_per_image_decode(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_data(str(data))
    m = cache_manifest(str(data))
    cache = build_cache(m, SIZE, tmp_path / "cache", decode_workers=3)
    assert cache.ok.all() and len(cache.errors) == 0, cache.errors
    assert cache.images.shape == (len(m), SIZE, SIZE, 3) and cache.images.dtype == np.uint8
    assert list(cache.keys) == sorted(m["key"]), "rows in key order"
    for i, key in zip(cache.rows_for(m["key"]), m["key"], strict=True):
        expected = decode((data / key).read_bytes(), SIZE)
        assert np.array_equal(cache.images[i], expected), f"row {i} ({key}) differs"
    assert not objects_dir(tmp_path / "cache").exists(), "a local folder is decoded in place"
    again = build_cache(m, SIZE, tmp_path / "cache")
    assert again.path == cache.path and np.array_equal(again.images, cache.images)


def test_concurrent_builds_share_one_complete_cache(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_data(str(data), per_class=2)
    m = cache_manifest(str(data))
    built: list[np.ndarray] = []

    def one() -> None:
        built.append(np.array(build_cache(m, SIZE, tmp_path / "cache").images))

    runs = [threading.Thread(target=one) for _ in range(3)]
    for t in runs:
        t.start()
    for t in runs:
        t.join()
    assert len(built) == 3 and all(np.array_equal(b, built[0]) for b in built)
    leftovers = [p.name for p in (tmp_path / "cache" / "images").iterdir() if ".tmp" in p.name]
    assert not leftovers, f"temp folders left: {leftovers}"


@pytest.mark.server
def test_s3_images_are_fetched_once_across_sizes_and_manifests(
    moto, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"s3://{bucket}/isic"
    write_data(uri)
    local = tmp_path / "local"
    write_data(str(local))  # the same seeded bytes, to decode directly
    m = cache_manifest(uri)
    with DelayProxy(moto.url, delay=0.0) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        cache = build_cache(m, SIZE, tmp_path / "cache", workers=4)
        first = proxy.requests
        proxy.reset()
        other_size = build_cache(m, SIZE + 8, tmp_path / "cache", workers=4)
        fewer = build_cache(m.iloc[::2].reset_index(drop=True), SIZE, tmp_path / "cache")
        again = proxy.requests
    assert first == {"GET": len(m)}, f"one GET per image: {first}"
    assert again == {}, f"another size or manifest fetches nothing already fetched: {again}"
    assert cache.ok.all() and other_size.ok.all() and fewer.ok.all()
    for i, key in zip(cache.rows_for(m["key"]), m["key"], strict=True):
        assert np.array_equal(cache.images[i], decode((local / key).read_bytes(), SIZE)), key
    same = cache.rows_for(fewer.keys)
    assert np.array_equal(fewer.images, cache.images[same]), "a sub-manifest decodes the same"


@pytest.mark.server
def test_unfetchable_and_undecodable_images_are_marked_bad(
    moto, s3_client, bucket: str, tmp_path: Path
) -> None:
    uri = f"s3://{bucket}/isic"
    write_data(uri, per_class=2)
    s3_client.put_object(Bucket=bucket, Key="isic/NV/broken.jpg", Body=b"\xff\xd8\xff not a jpeg")
    m = cache_manifest(uri)
    gone = m.index[m["key"] != "NV/broken.jpg"][0]
    s3_client.delete_object(Bucket=bucket, Key=f"isic/{m.loc[gone, 'key']}")

    cache = build_cache(m, SIZE, tmp_path / "cache", workers=4)
    bad = dict(zip(cache.errors["key"], cache.errors["error"], strict=True))
    assert set(bad) == {"NV/broken.jpg", m.loc[gone, "key"]}, bad
    assert "NoSuchKey" in bad[m.loc[gone, "key"]] and "image" in bad["NV/broken.jpg"], bad
    flagged = cache.ok[cache.rows_for([m.loc[gone, "key"]])]
    assert (~cache.ok).sum() == 2 and not flagged.any(), "bad rows are flagged"
    assert cache.ok.sum() == len(m) - 2, "every other image is decoded"


def test_a_persistent_loader_replays_each_epoch_like_a_fresh_one(tmp_path: Path) -> None:
    from skin.train.datasets import EvalImages, make_loader, set_epoch

    data = tmp_path / "data"
    write_data(str(data), per_class=4)
    m = cache_manifest(str(data))
    cache = build_cache(m, SIZE, tmp_path / "cache")
    rows = np.arange(len(m))
    ds = EvalImages(cache, rows, rows % 8, SIZE)
    common = {"batch_size": 5, "shuffle": True, "seed": 3, "num_workers": 2}
    kept = make_loader(ds, epoch=1, persistent=True, **common)
    assert kept.persistent_workers
    for epoch in (1, 2, 3):
        fresh = [(x, y) for x, y in make_loader(ds, epoch=epoch, **common)]
        again = list(set_epoch(kept, epoch))
        assert len(fresh) == len(again) == 7
        for (xa, ya), (xb, yb) in zip(fresh, again, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb), f"epoch {epoch} differs"
    one, two = (torch.cat([y for _, y in set_epoch(kept, e)]) for e in (1, 2))
    assert not torch.equal(one, two), "each epoch has its own order"


@pytest.mark.parametrize("order", ["reversed", "shuffled"])
def test_a_reordered_manifest_reads_each_key_its_own_image(tmp_path: Path, order: str) -> None:
    data = tmp_path / "data"
    write_data(str(data))
    m = with_splits(cache_manifest(str(data)))
    cfg = PipelineConfig(work_dir=str(tmp_path / "work"))
    first = index_splits(m, cfg, plain_spec(SIZE))
    assert_each_key_reads_its_own_image(first, m, data)
    other = reordered(m, order)
    again = index_splits(other, cfg, plain_spec(SIZE))
    assert again.cache.path == first.cache.path, "the same data reuses its cache"
    assert_each_key_reads_its_own_image(again, other, data)


def test_rows_are_found_by_key_and_an_unknown_key_is_an_error(tmp_path: Path) -> None:
    keys = np.array(["AK/a.jpg", "BCC/b.jpg", "NV/c.jpg"], dtype=object)
    images = np.arange(3, dtype=np.uint8).reshape(3, 1, 1, 1).repeat(3, axis=3)
    cache = ImageCache(tmp_path, images, np.ones(3, bool), pd.DataFrame(columns=["key"]), keys)
    assert list(cache.rows_for(["NV/c.jpg", "AK/a.jpg"])) == [2, 0]
    with pytest.raises(ValueError, match=r"no image for 1 of 2 keys.*MEL/x\.jpg.*another manifest"):
        cache.rows_for(["AK/a.jpg", "MEL/x.jpg"])
    twice = pd.DataFrame({"key": ["NV/c.jpg", "AK/a.jpg", "NV/c.jpg"]})
    with pytest.raises(ValueError, match="duplicate keys"):
        in_key_order(twice)


def test_cache_meta_reads_back_as_written_and_another_format_is_refused(tmp_path: Path) -> None:
    from skin.data.storage import LocalStore

    store = LocalStore(tmp_path)
    ok = np.array([True, False, True])
    written = write_meta(store, 16, ["a", "b", "c"], ok, [("b", "truncated")], shard_rows=2)
    meta, ok_read, errors, keys = read_meta(store)
    assert meta == written and meta["shard_rows"] == 2 and meta["bad"] == 1, meta
    assert np.array_equal(ok_read, ok) and keys == ["a", "b", "c"]
    assert errors.to_dict("records") == [{"key": "b", "error": "truncated"}]
    with pytest.raises(ValueError, match="key order"):
        write_meta(store, 16, ["b", "a"], ok[:2], [])
    store.put("meta.json", json.dumps({**meta, "format": FORMAT - 1}).encode())
    with pytest.raises(ValueError, match=f"format {FORMAT - 1}, expected {FORMAT}"):
        read_meta(store)
