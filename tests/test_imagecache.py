"""The decoded-image cache: equal to per-image decoding, fed by the fetch cache, bad images marked."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from benchmarks.proxy import DelayProxy
from skin.datastages import source_uri
from skin.imagecache import build_cache, objects_dir
from skin.images import decode
from skin.listing import list_dataset
from skin.sample_data import write_sample_dataset
from skin.storage import open_store

SIZE = 36


def make_manifest(uri: str) -> pd.DataFrame:
    """Every listed image as a train row: the cache needs keys, fingerprints and the source."""
    images = list_dataset(open_store(uri), "folders").images
    return images.assign(split="train", keep=True, source=source_uri(uri))


def write_data(uri: str, per_class: int = 3) -> None:
    counts = dict.fromkeys(["AK", "BCC", "BKL", "DF", "MEL", "NV", "SCC", "VASC"], per_class)
    write_sample_dataset(uri, counts, size=48, seed=5, threads=2)  # few S3 clients to start


def test_cache_equals_per_image_decode(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_data(str(data))
    m = make_manifest(str(data))
    cache = build_cache(m, SIZE, tmp_path / "cache", decode_workers=3)
    assert cache.ok.all() and len(cache.errors) == 0, cache.errors
    assert cache.images.shape == (len(m), SIZE, SIZE, 3) and cache.images.dtype == np.uint8
    for i, key in enumerate(m["key"]):
        expected = decode((data / key).read_bytes(), SIZE)
        assert np.array_equal(cache.images[i], expected), f"row {i} ({key}) differs"
    assert not objects_dir(tmp_path / "cache").exists(), "a local folder is decoded in place"
    again = build_cache(m, SIZE, tmp_path / "cache")
    assert again.path == cache.path and np.array_equal(again.images, cache.images)


def test_concurrent_builds_share_one_complete_cache(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_data(str(data), per_class=2)
    m = make_manifest(str(data))
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
    m = make_manifest(uri)
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
    for i, key in enumerate(m["key"]):
        assert np.array_equal(cache.images[i], decode((local / key).read_bytes(), SIZE)), key
    assert np.array_equal(fewer.images, cache.images[::2]), "a sub-manifest decodes the same"


@pytest.mark.server
def test_unfetchable_and_undecodable_images_are_marked_bad(
    moto, s3_client, bucket: str, tmp_path: Path
) -> None:
    uri = f"s3://{bucket}/isic"
    write_data(uri, per_class=2)
    s3_client.put_object(Bucket=bucket, Key="isic/NV/broken.jpg", Body=b"\xff\xd8\xff not a jpeg")
    m = make_manifest(uri)
    gone = m.index[m["key"] != "NV/broken.jpg"][0]
    s3_client.delete_object(Bucket=bucket, Key=f"isic/{m.loc[gone, 'key']}")

    cache = build_cache(m, SIZE, tmp_path / "cache", workers=4)
    bad = dict(zip(cache.errors["key"], cache.errors["error"], strict=True))
    assert set(bad) == {"NV/broken.jpg", m.loc[gone, "key"]}, bad
    assert "NoSuchKey" in bad[m.loc[gone, "key"]] and "image" in bad["NV/broken.jpg"], bad
    assert (~cache.ok).sum() == 2 and not cache.ok[gone], "bad rows are flagged"
    assert cache.ok.sum() == len(m) - 2, "every other image is decoded"


def test_a_persistent_loader_replays_each_epoch_like_a_fresh_one(tmp_path: Path) -> None:
    from skin.data import EvalImages, make_loader, set_epoch

    data = tmp_path / "data"
    write_data(str(data), per_class=4)
    m = make_manifest(str(data))
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
