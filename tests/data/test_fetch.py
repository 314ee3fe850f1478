"""The fetch cache: identical bytes, zero requests on a re-run, safe paths, failures reported."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from benchmarks.proxy import DelayProxy
from skin.data.fetch import Fetcher, FetchError, ObjectCache
from skin.data.storage import LocalStore, S3Store


def put_objects(s3_client, bucket: str, n: int = 12) -> dict[str, bytes]:
    """n objects of different sizes (one spans several stream chunks) under `data/`."""
    objects = {f"C{i % 3}/img_{i:03d}.jpg": bytes([i]) * (1000 + 97 * i) for i in range(n)}
    objects["C0/big.jpg"] = hashlib.sha256(b"x").digest() * 40_000  # 1.3 MB: many chunks
    for key, body in objects.items():
        s3_client.put_object(Bucket=bucket, Key=f"data/{key}", Body=body)
    return objects


def listed(store: S3Store) -> tuple[list[str], list[str]]:
    infos = sorted(store.list(), key=lambda o: o.key)
    return [o.key for o in infos], [o.fingerprint for o in infos]


@pytest.fixture
def proxy(moto, monkeypatch: pytest.MonkeyPatch):
    """A counting (not delaying) proxy in front of moto: every request the code makes is seen."""
    with DelayProxy(moto.url, delay=0.0) as p:
        monkeypatch.setenv("AWS_ENDPOINT_URL", p.url)
        yield p


@pytest.mark.server
def test_fetch_returns_identical_bytes_and_a_rerun_requests_nothing(
    s3_client, bucket: str, proxy: DelayProxy, tmp_path: Path
) -> None:
    objects = put_objects(s3_client, bucket)
    store = S3Store(f"s3://{bucket}/data")
    keys, fps = listed(store)
    proxy.reset()

    first = Fetcher(tmp_path / "objects", workers=4)
    got = {keys[f.index]: f for f in first.fetch(store, keys, fps)}
    assert {k: f.error for k, f in got.items() if f.error} == {}, "every object fetched"
    for key, item in got.items():
        assert item.path is not None and item.path.read_bytes() == objects[key], key
    assert proxy.requests == {"GET": len(keys)}, f"one GET per object: {proxy.requests}"
    total = sum(map(len, objects.values()))
    assert first.stats.downloaded == len(keys) and first.stats.bytes == total, first.stats

    proxy.reset()
    again = Fetcher(tmp_path / "objects", workers=4)
    paths = {keys[f.index]: f.path for f in again.fetch(S3Store(f"s3://{bucket}/data"), keys, fps)}
    assert proxy.requests == {}, f"a re-run asks S3 for nothing: {proxy.requests}"
    assert again.stats.cached == len(keys) and again.stats.downloaded == 0, again.stats
    assert paths == {k: f.path for k, f in got.items()}, "the same files are reused"
    assert not list((tmp_path / "objects").rglob("*.tmp")), "no temp files left behind"


@pytest.mark.server
def test_missing_changed_and_unsafe_objects_are_reported_not_fatal(
    s3_client, bucket: str, moto, tmp_path: Path
) -> None:
    objects = put_objects(s3_client, bucket, n=4)
    store = S3Store(f"s3://{bucket}/data")
    keys, fps = listed(store)
    s3_client.put_object(Bucket=bucket, Key=f"data/{keys[0]}", Body=b"changed after listing")
    keys += ["C1/never_uploaded.jpg", "C1/../../escape.jpg"]
    fps += ["0" * 32, "1" * 32]

    fetcher = Fetcher(tmp_path / "objects", workers=4)
    errors = {keys[f.index]: f.error for f in fetcher.fetch(store, keys, fps) if f.error}
    assert set(errors) == {keys[0], "C1/never_uploaded.jpg", "C1/../../escape.jpg"}, errors
    assert "changed since listing" in errors[keys[0]], errors[keys[0]]
    assert "NoSuchKey" in errors["C1/never_uploaded.jpg"], errors
    assert "unsafe object key" in errors["C1/../../escape.jpg"], errors
    assert fetcher.stats.failed == 3 and fetcher.stats.downloaded == len(objects) - 1
    stored = {p.name for p in (tmp_path / "objects").rglob("*") if p.is_file()}
    assert stored == set(fps[1 : len(objects)]), "only the good objects are cached, by fingerprint"


@pytest.mark.server
def test_concurrent_fetchers_leave_whole_files(s3_client, bucket: str, tmp_path: Path) -> None:
    objects = put_objects(s3_client, bucket)
    store = S3Store(f"s3://{bucket}/data")
    keys, fps = listed(store)
    results: list[dict[str, bytes]] = []

    def one_run() -> None:
        fetcher = Fetcher(tmp_path / "shared", workers=8)
        got = list(fetcher.fetch(S3Store(store.uri), keys, fps))
        results.append({keys[f.index]: f.path.read_bytes() for f in got if f.path})

    runs = [threading.Thread(target=one_run) for _ in range(3)]
    for t in runs:
        t.start()
    for t in runs:
        t.join()
    assert len(results) == 3 and all(r == objects for r in results), "every run sees whole files"
    assert not list((tmp_path / "shared").rglob("*.tmp")), "no temp files left behind"


def test_cache_paths_come_only_from_fingerprints(tmp_path: Path) -> None:
    cache = ObjectCache(tmp_path / "objects")
    md5 = "d41d8cd98f00b204e9800998ecf8427e"
    assert cache.path(md5) == tmp_path / "objects" / "d4" / md5
    assert cache.path(f'"{md5}-12"').name == f"{md5}-12", "multipart ETags and quotes are fine"
    for hostile in ("../../etc/passwd", "/abs/path", "a/b/c", "..", "x" * 500):
        path = cache.path(hostile)
        assert path.parent.parent == tmp_path / "objects", f"{hostile!r} escaped: {path}"
        assert "/" not in path.name and ".." not in path.name, path
    for empty in ("", "nan", '""'):
        with pytest.raises(FetchError, match="no fingerprint"):
            cache.path(empty)


def test_a_local_folder_is_read_in_place(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "NV").mkdir(parents=True)
    (root / "NV" / "a.jpg").write_bytes(b"abc")
    store = LocalStore(root)
    fetcher = Fetcher(tmp_path / "objects")
    got = list(fetcher.fetch(store, ["NV/a.jpg", "NV/gone.jpg"], ["x", "y"]))
    assert got[0].path == root / "NV" / "a.jpg" and got[0].error is None, got[0]
    assert got[1].path is None and "not found" in str(got[1].error), got[1]
    assert not (tmp_path / "objects").exists(), "nothing is copied from a local folder"


class FlakyStore:
    """A store whose first read of every key breaks mid-stream, as a dropped connection does."""

    uri = "flaky://test"

    def __init__(self, data: dict[str, bytes]) -> None:
        self.data, self.calls = data, dict.fromkeys(data, 0)
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes:
        from botocore.exceptions import ResponseStreamingError

        with self._lock:
            self.calls[key] += 1
            first = self.calls[key] == 1
        if first:
            raise ResponseStreamingError(error="connection reset mid-body")
        return self.data[key]


def test_a_stream_that_breaks_is_retried_and_the_md5_checked(tmp_path: Path) -> None:
    data = {"a.jpg": b"alpha", "b.jpg": b"beta"}
    fps = [hashlib.md5(data["a.jpg"]).hexdigest(), "0" * 32]  # b's fingerprint is wrong
    store = FlakyStore(data)
    fetcher = Fetcher(tmp_path / "objects", workers=2)
    got = sorted(fetcher.fetch(store, list(data), fps), key=lambda f: f.index)  # type: ignore[arg-type]
    assert got[0].path is not None and got[0].path.read_bytes() == b"alpha", got[0]
    assert store.calls["a.jpg"] == 2, "one broken stream, one retry"
    assert got[1].path is None and "differs from fingerprint" in str(got[1].error), got[1]
