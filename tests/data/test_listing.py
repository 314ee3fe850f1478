"""Listing both layouts from a real moto_server (and a folder): pagination, skips, metadata."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

from skin.data.listing import GROUND_TRUTH, METADATA, ListingError, list_dataset
from skin.data.storage import LocalStore, S3Store, StorageError, open_store
from tests.helpers import snapshot

pytestmark = pytest.mark.server


def put_all(s3_client, bucket: str, objects: dict[str, bytes]) -> None:
    with ThreadPoolExecutor(16) as pool:
        list(
            pool.map(
                lambda kv: s3_client.put_object(Bucket=bucket, Key=kv[0], Body=kv[1]),
                objects.items(),
            )
        )


def test_folder_layout_counts_and_reports_every_skip(s3_client, bucket: str) -> None:
    objects = {
        f"isic/{c}/ISIC_{i:07d}.jpg": f"{c}{i}".encode()
        for i, c in enumerate(["AK", "BCC", "NV", "NV", "MEL"])
    }
    objects |= {
        "isic/VASC/ISIC_0000100.JPEG": b"upper-case suffix",
        "isic/DF/ISIC_0000101.png": b"png",
        "isic/DF/notes.txt": b"not an image",
        "isic/README.md": b"not an image",
        "isic/loose.jpg": b"not in a class folder",
        "isic/XYZ/ISIC_0000102.jpg": b"unknown class",
        "isic/nv/ISIC_0000103.jpg": b"lower-case class folder",
        "isic/MEL/ISIC 0000104 é.jpg": b"spaces and non-ascii",
        "isic/MEL/empty.jpg": b"",
        "other/AK/ISIC_0000105.jpg": b"outside the prefix",
    }
    put_all(s3_client, bucket, objects)
    listing = list_dataset(open_store(f"s3://{bucket}/isic"))
    assert listing.layout == "folders", listing.layout
    counts = listing.counts().to_dict()
    assert counts == {"AK": 1, "BCC": 1, "DF": 1, "MEL": 2, "NV": 3, "VASC": 1}, counts
    reasons = dict(zip(listing.skipped["key"], listing.skipped["reason"], strict=True))
    assert reasons == {
        "DF/notes.txt": "not an image file",
        "README.md": "not an image file",
        "loose.jpg": "not in a class folder",
        "XYZ/ISIC_0000102.jpg": "unknown class folder XYZ",
        "MEL/empty.jpg": "empty object",
    }, reasons
    row = listing.images.set_index("key").loc["AK/ISIC_0000000.jpg"]
    assert row["size"] == 3 and len(row["fingerprint"]) == 32, "size and ETag recorded"


@pytest.mark.slow  # tens of seconds: out of `make test-fast`, still in `make test`
def test_a_class_of_2500_objects_is_listed_whole(s3_client, bucket: str) -> None:
    put_all(s3_client, bucket, {f"NV/ISIC_{i:07d}.jpg": b"x" for i in range(2500)})
    put_all(s3_client, bucket, {f"MEL/ISIC_{i:07d}.jpg": b"y" for i in range(3000, 3010)})
    listing = list_dataset(S3Store(f"s3://{bucket}"))
    assert listing.counts().to_dict() == {"MEL": 10, "NV": 2500}, "pagination lost objects"


def isic_tables(n: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    classes = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"]
    truth = pd.DataFrame({"image": [f"ISIC_{i:07d}" for i in range(n)]})
    for c in [*classes, "UNK"]:
        truth[c] = 0.0
    for i in range(n):
        truth.loc[i, classes[i % len(classes)]] = 1.0
    meta = pd.DataFrame(
        {
            "image": truth["image"],
            "age_approx": 40.0,
            "anatom_site_general": "head/neck",
            "lesion_id": [f"HAM_{i // 2:07d}" if i < n - 4 else "" for i in range(n)],
            "sex": "male",
        }
    )
    return truth, meta


def test_isic_layout_with_ground_truth_and_metadata(s3_client, bucket: str) -> None:
    truth, meta = isic_tables(40)
    truth.loc[3, ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"]] = 0.0  # no class
    truth.loc[3, "UNK"] = 1.0
    truth.loc[5, "NV"] = 1.0  # two classes (row 5 is DF)
    objects = {
        f"data/ISIC_2019_Training_Input/{img}.jpg": img.encode()
        for img in truth["image"]
        if img != "ISIC_0000007"
    }  # 7: listed, missing
    objects["data/ISIC_2019_Training_Input/ISIC_9999999.jpg"] = b"not in csv"
    objects[f"data/{GROUND_TRUTH}"] = truth.to_csv(index=False).encode()
    objects[f"data/{METADATA}"] = meta.to_csv(index=False).encode()
    put_all(s3_client, bucket, objects)
    before = snapshot(s3_client, bucket)

    listing = list_dataset(open_store(f"s3://{bucket}/data"))
    assert listing.layout == "isic", "the ground-truth CSV selects the ISIC layout"
    assert len(listing.images) == 37, (
        f"40 rows - no class - two classes - missing: {len(listing.images)}"
    )
    reasons = listing.skip_counts().to_dict()
    assert reasons == {
        "ground-truth row has no known class (UNK)": 1,
        "ground-truth row has several classes": 1,
        "listed in the ground-truth CSV but missing from the store": 1,
        "image not in the ground-truth CSV": 1,
    }, reasons
    imgs = listing.images.set_index("image_id")
    assert imgs.loc["ISIC_0000000", "label"] == "MEL" and imgs.loc["ISIC_0000009", "label"] == "NV"
    assert imgs.loc["ISIC_0000010", "lesion_id"] == "HAM_0000005", "lesion ids come from metadata"
    assert imgs["lesion_id"].isna().sum() == 4, "empty lesion ids stay unknown"
    assert snapshot(s3_client, bucket) == before, "listing must not change the bucket"


def test_local_folder_and_errors(tmp_path: Path) -> None:
    (tmp_path / "AK").mkdir()
    (tmp_path / "AK" / "a.jpg").write_bytes(b"abc")
    listing = list_dataset(LocalStore(tmp_path))
    assert listing.images.iloc[0]["fingerprint"] == "900150983cd24fb0d6963f7d28e17f72", "md5 = ETag"
    (tmp_path / "AK" / "a.jpg").unlink()
    with pytest.raises(ListingError, match="no labelled images"):
        list_dataset(LocalStore(tmp_path))
    with pytest.raises(StorageError, match="not found"):
        list_dataset(LocalStore(tmp_path / "missing"))
    with pytest.raises(StorageError, match="unsupported"):
        open_store("ftp://x/y")


def test_unreachable_endpoint_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.servers import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    store = S3Store("s3://nowhere/data", retries=1, connect_timeout=1)
    with pytest.raises(StorageError, match="cannot list s3://nowhere/data"):
        list(store.list())


def test_isic_layout_without_ground_truth_says_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "NV").mkdir()
    (tmp_path / "NV" / "ISIC_0000001.jpg").write_bytes(b"jpeg")
    with pytest.raises(ListingError, match="layout isic needs ISIC_2019_Training_GroundTruth"):
        list_dataset(open_store(str(tmp_path)), layout="isic")
