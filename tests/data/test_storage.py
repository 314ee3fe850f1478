"""skin.data.storage: one Store protocol over a folder and an S3 prefix; safe keys, atomic writes, lists."""

from __future__ import annotations

import hashlib
import pickle
import threading
from pathlib import Path
from typing import Any

import pytest

from skin.data.storage import (
    LocalStore,
    ObjectInfo,
    S3Store,
    StorageError,
    check_reachable,
    exists_uri,
    join_uri,
    open_store,
    read_uri,
    safe_key,
    write_uri,
)

UNSAFE = ["", "/etc/passwd", "../x.jpg", "a/../../x.jpg", "a/..", ".", "./", "a/.", "a//b", "a/"]


@pytest.mark.parametrize("key", ["a.jpg", "MEL/ISIC_0000001.jpg", "a/b/c d é.jpg", "..a/b..c"])
def test_safe_keys_pass_unchanged(key: str) -> None:
    assert safe_key(key) == key


@pytest.mark.parametrize("key", UNSAFE)
def test_keys_that_could_leave_the_root_or_name_no_file_are_refused(key: str) -> None:
    with pytest.raises(StorageError, match="unsafe object key"):
        safe_key(key)


@pytest.mark.parametrize("key", UNSAFE)
def test_a_folder_store_never_writes_outside_its_root(tmp_path: Path, key: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(StorageError, match="unsafe object key"):
        LocalStore(root).put(key, b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"], "nothing written beside it"
    assert not any(root.iterdir()), "nothing written inside it either"


def test_open_store_picks_the_store_by_the_uri(tmp_path: Path) -> None:
    assert isinstance(open_store(str(tmp_path)), LocalStore)
    local = open_store(f"file://{tmp_path}")
    assert isinstance(local, LocalStore) and local.uri == str(tmp_path.resolve())
    s3 = open_store("s3://bucket/some/prefix/")
    assert isinstance(s3, S3Store) and (s3.bucket, s3.prefix) == ("bucket", "some/prefix")
    assert s3.uri == "s3://bucket/some/prefix", "the prefix is normalised without slashes"
    with pytest.raises(StorageError, match=r"unsupported data URI 'gs://b/p'"):
        open_store("gs://b/p")
    with pytest.raises(StorageError, match="S3 URI without a bucket"):
        open_store("s3:///prefix")


def test_a_folder_store_round_trips_bytes_and_lists_with_md5(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    objects = {"b/2.jpg": b"two", "a.jpg": b"", "b/c/3.jpg": bytes(range(256)) * 5000}
    for key, data in objects.items():
        store.put(key, data)
    for key, data in objects.items():
        assert store.exists(key) and store.get(key) == data, key
    listed = list(store.list())
    assert [o.key for o in listed] == sorted(objects), "every file, sorted, '/'-separated"
    want = {k: ObjectInfo(k, len(v), hashlib.md5(v).hexdigest()) for k, v in objects.items()}
    assert {o.key: o for o in listed} == want, "size and the MD5 of the bytes (S3's ETag)"


def test_a_put_replaces_an_object_whole_and_leaves_no_temp_file(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("x/a.bin", b"old" * 1000)
    store.put("x/a.bin", b"new")
    assert store.get("x/a.bin") == b"new"
    assert [p.name for p in (tmp_path / "x").iterdir()] == ["a.bin"], "no temp files left"


def test_concurrent_puts_of_one_key_never_leave_a_mixed_object(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    versions = [bytes([i]) * 200_000 for i in range(8)]
    threads = [threading.Thread(target=store.put, args=("k.bin", v)) for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.get("k.bin") in versions, "one writer's bytes, whole"
    assert [p.name for p in tmp_path.iterdir()] == ["k.bin"]


def test_a_missing_object_and_a_missing_folder_are_named(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    assert not store.exists("nope.jpg")
    with pytest.raises(StorageError, match=r"object not found: .*nope\.jpg"):
        store.get("nope.jpg")
    with pytest.raises(StorageError, match="data folder not found"):
        list(LocalStore(tmp_path / "absent").list())
    (tmp_path / "folder").mkdir()
    assert not store.exists("folder"), "a folder is not an object"


def test_join_uri_joins_folders_and_s3_prefixes() -> None:
    assert join_uri("s3://b/p/", "/runs/", "x.csv") == "s3://b/p/runs/x.csv"
    assert join_uri("/data/work", "runs", "x.csv") == "/data/work/runs/x.csv"


def test_one_file_uris_write_atomically_and_read_back(tmp_path: Path) -> None:
    uri = str(tmp_path / "deep" / "er" / "t.bin")
    assert not exists_uri(uri)
    write_uri(uri, b"payload")
    assert exists_uri(uri) and read_uri(uri) == b"payload"
    assert [p.name for p in (tmp_path / "deep" / "er").iterdir()] == ["t.bin"]


def test_check_reachable_ignores_folders(tmp_path: Path) -> None:
    check_reachable(str(tmp_path / "not-even-there"))  # folders are checked when listed


def test_an_s3_store_pickles_without_its_client() -> None:
    store = S3Store("s3://bucket/prefix", retries=2)
    store._local.client = object()  # as if a client had been made in this thread
    clone = pickle.loads(pickle.dumps(store))
    assert (clone.bucket, clone.prefix, clone.uri) == (store.bucket, store.prefix, store.uri)
    assert getattr(clone._local, "client", None) is None, "a client never crosses processes"


def test_s3_keys_sit_under_the_prefix_and_unsafe_ones_are_refused() -> None:
    assert S3Store("s3://b/p/q").full_key("MEL/x.jpg") == "p/q/MEL/x.jpg"
    assert S3Store("s3://b").full_key("MEL/x.jpg") == "MEL/x.jpg"
    with pytest.raises(StorageError, match="unsafe object key"):
        S3Store("s3://b/p").full_key("../other/x.jpg")


@pytest.mark.server
def test_an_s3_store_honours_the_protocol_under_its_prefix(s3_client: Any, bucket: str) -> None:
    s3_client.put_object(Bucket=bucket, Key="other/x.jpg", Body=b"outside")
    s3_client.put_object(Bucket=bucket, Key="data/folder/", Body=b"")  # a folder marker
    store = open_store(f"s3://{bucket}/data")
    objects = {"MEL/a.jpg": b"mel", "NV/b/c.jpg": b"nv" * 100}
    for key, data in objects.items():
        store.put(key, data)
    assert {k: store.get(k) for k in objects} == objects
    assert store.exists("MEL/a.jpg") and not store.exists("MEL/zz.jpg")
    listed = {o.key: o for o in store.list()}
    want = {k: ObjectInfo(k, len(v), hashlib.md5(v).hexdigest()) for k, v in objects.items()}
    assert listed == want, "keys relative to the prefix; markers and other prefixes left out"
    assert s3_client.get_object(Bucket=bucket, Key="data/MEL/a.jpg")["Body"].read() == b"mel"


@pytest.mark.server
def test_s3_errors_name_the_object_and_keep_the_cause(s3_client: Any, bucket: str) -> None:
    store = S3Store(f"s3://{bucket}/data", retries=1)
    with pytest.raises(StorageError, match=rf"cannot read s3://{bucket}/data/x\.jpg") as info:
        store.get("x.jpg")
    assert info.value.__cause__ is not None, "the botocore error is chained"
    gone = S3Store(f"s3://{bucket}-missing/data", retries=1)
    with pytest.raises(StorageError, match=f"cannot write s3://{bucket}-missing/data/x.jpg"):
        gone.put("x.jpg", b"x")


@pytest.mark.server
def test_one_file_s3_uris_and_reachability(s3_client: Any, bucket: str) -> None:
    uri = f"s3://{bucket}/runs/t.bin"
    assert not exists_uri(uri)
    write_uri(uri, b"payload")
    assert exists_uri(uri) and read_uri(uri) == b"payload"
    check_reachable(f"s3://{bucket}/runs")
    with pytest.raises(StorageError, match=f"cannot reach bucket '{bucket}-missing'.*AWS_ENDPOINT"):
        check_reachable(f"s3://{bucket}-missing/data", timeout=2)
