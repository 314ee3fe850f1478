"""The data-stage commands as a user runs them, against moto_server: nothing in the bucket changes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from skin.data import manifest as mf
from tests.helpers import invoke, snapshot

pytestmark = pytest.mark.server


@pytest.mark.slow  # tens of seconds: out of `make test-fast`, still in `make test`
def test_sample_data_to_s3_then_list_split_and_grow(
    s3_client, bucket: str, tmp_path: Path, prefect_api
) -> None:
    data = f"s3://{bucket}/isic"
    code, out = invoke("sample-data", data, "--per-class", "12", "--size", "32")
    assert code == 0, out
    before = snapshot(s3_client, bucket)
    assert len([k for k in before if k.endswith(".jpg")]) == 96, "8 classes × 12 images written"

    work = ["--config", str(_config(tmp_path))]
    code, out = invoke("--json", "list", "--data", data, *work)
    assert code == 0, out
    listed = json.loads(out)
    assert listed["counts"] == dict.fromkeys(
        ["AK", "BCC", "BKL", "DF", "MEL", "NV", "SCC", "VASC"], 12
    )

    manifest = tmp_path / "m.parquet"
    code, out = invoke("split", "--data", data, "--out", str(manifest), *work)
    assert code == 0, out
    assert "train (after)" in out and "VASC" in out, out
    df = mf.read(str(manifest))
    assert df.groupby("label")["split"].value_counts().unstack()["test"].min() >= 1

    csv = tmp_path / "m.csv"
    code, out = invoke("split", "--data", data, "--out", str(csv), *work)
    assert code == 0, out
    assert mf.manifest_hash(mf.read(str(csv))) == mf.manifest_hash(df), "CSV reads back the same"

    # 10 % more images arrive; the new manifest keeps every earlier assignment.
    code, out = invoke(
        "sample-data", f"s3://{bucket}/isic", "--per-class", "2", "--size", "32", "--seed", "5"
    )
    assert code == 0, out
    grown_before = snapshot(s3_client, bucket)
    grown = tmp_path / "grown.parquet"
    code, out = invoke(
        "split", "--data", data, "--out", str(grown), "--previous", str(manifest), *work
    )
    assert code == 0, out
    new = mf.read(str(grown)).set_index("key")["split"]
    old = df.set_index("key")["split"]
    assert len(new) == 112 and new.loc[old.index].equals(old), "stable as data grows"
    assert snapshot(s3_client, bucket) == grown_before, "no source object may change"
    assert set(before) <= set(grown_before), "nothing was deleted"


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(f"work_dir: {tmp_path / 'work'}\n")
    return path


def test_isic_layout_sample_data_is_detected(tmp_path: Path, prefect_api) -> None:
    root = tmp_path / "isic"
    code, out = invoke(
        "sample-data", str(root), "--total", "200", "--layout", "isic", "--size", "24"
    )
    assert code == 0, out
    assert (root / "ISIC_2019_Training_GroundTruth.csv").exists()
    code, out = invoke("--json", "list", "--data", str(root), "--config", str(_config(tmp_path)))
    assert code == 0, out
    listed = json.loads(out)
    assert listed["layout"] == "isic" and sum(listed["counts"].values()) == 200, listed
    assert listed["counts"]["NV"] > listed["counts"]["DF"], "ISIC proportions"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fractions", "0.8,0.1,0.2"], "sum to 1"),
        (["--fractions", "0.8,0.2"], "three fractions"),
        (["--balance", "oversample"], "balance"),
        (["--majority", "XYZ"], "majority_class"),
    ],
)
def test_bad_split_options_fail_fast_with_the_field_named(
    tmp_path: Path, sample_data: Path, args: list[str], message: str
) -> None:
    code, out = invoke(
        "split", "--data", str(sample_data), "--out", str(tmp_path / "m.parquet"), *args
    )
    assert code != 0, out
    assert message in out, out
    assert not (tmp_path / "m.parquet").exists(), "nothing written on a bad setting"


def test_tiny_class_and_empty_dataset_are_clear_errors(tmp_path: Path, prefect_api) -> None:
    from skin.data.sample_data import write_sample_dataset

    data = tmp_path / "data"
    write_sample_dataset(str(data), {"NV": 20, "DF": 2}, size=24, seed=0, repeat_fraction=0.0)
    code, out = invoke(
        "split",
        "--data",
        str(data),
        "--out",
        str(tmp_path / "m.parquet"),
        "--config",
        str(_config(tmp_path)),
    )
    assert code == 1 and "class DF is too small" in out, out
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out = invoke("list", "--data", str(empty), "--config", str(_config(tmp_path)))
    assert code == 1 and "no labelled images" in out, out


@pytest.mark.slow  # an S3 dataset audited through the CLI: tens of seconds
def test_audit_finds_planted_copies_in_s3_and_changes_nothing_there(
    s3_client, bucket: str, tmp_path: Path, prefect_api
) -> None:
    from tests.helpers import planted_images

    images, truth = planted_images(per_class=5, copies_per_kind=1, size=96, seed=11)
    for s in images:
        s3_client.put_object(Bucket=bucket, Key=f"isic/{s.label}/{s.image_id}.jpg", Body=s.data)
    before = snapshot(s3_client, bucket)
    data, work = f"s3://{bucket}/isic", ["--config", str(_config(tmp_path))]
    code, out = invoke("audit", "--data", data, "--manifest", "latest", *work)
    assert code == 1 and "no manifest yet" in out, "a manifest that is not there is named"
    code, out = invoke("split", "--data", data, "--out", str(tmp_path / "m.parquet"), *work)
    assert code == 0, out
    code, out = invoke("--json", "audit", "--data", data, "--manifest", "latest", *work)
    assert code == 0, out
    result = json.loads(out)
    assert result["audit"]["pairs"] >= len(truth), result["audit"]
    assert result["leaks"]["pairs"] == 0, "the split kept every cluster in one split"
    assert snapshot(s3_client, bucket) == before, "the audit wrote to or changed the bucket"
    code, out = invoke("audit", "--data", data, "--run-id", "r1", *work)
    assert code != 0 and "--manifest" in out, out
