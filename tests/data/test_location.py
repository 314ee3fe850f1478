"""Dataset locations: a folder or s3://bucket/prefix, parsed once; the (state, data) pair."""

from __future__ import annotations

from pathlib import Path

import pytest

from skin.base.config import PipelineConfig
from skin.data.location import FORMS, DataLocation, DatasetState, LocationError


@pytest.mark.parametrize(
    ("text", "s3", "bucket", "prefix"),
    [
        ("s3://bucket/isic/2019", True, "bucket", "isic/2019"),
        ("s3://bucket/isic/", True, "bucket", "isic"),
        ("s3://bucket", True, "bucket", ""),
        ("demo/data", False, "", ""),
        ("/abs/images", False, "", ""),
    ],
)
def test_a_location_says_where_without_string_checks(
    text: str, s3: bool, bucket: str, prefix: str
) -> None:
    where = DataLocation.parse(text)
    assert (where.is_s3, where.bucket, where.prefix) == (s3, bucket, prefix), where
    assert str(where) == text and DataLocation.parse(str(where)) == where, "round-trips"


def test_file_uris_are_folders_and_the_source_is_absolute(tmp_path: Path) -> None:
    where = DataLocation.parse(f"file://{tmp_path}")
    assert not where.is_s3 and where.uri == str(tmp_path)
    assert where.source == str(tmp_path.resolve())
    assert DataLocation.parse("s3://b/p/").source == "s3://b/p", "no trailing slash recorded"
    assert where.dataset_id == DataLocation.parse(str(tmp_path)).dataset_id, "one dataset"


@pytest.mark.parametrize(
    ("text", "why"),
    [("", "is empty"), ("gs://b/p", "unsupported data URI"), ("s3://", "without a bucket")],
)
def test_a_bad_location_is_named_with_the_accepted_forms(text: str, why: str) -> None:
    with pytest.raises(LocationError, match=why) as caught:
        DataLocation.parse(text)
    assert repr(text) in str(caught.value) and FORMS in str(caught.value), caught.value


def test_the_state_pair_comes_from_the_config() -> None:
    cfg = PipelineConfig.model_validate({"data": {"uri": "s3://b/isic"}, "work_dir": "w"})
    state = DatasetState.of(cfg)
    assert state == DatasetState("w", "s3://b/isic") and state.location.bucket == "b"
    shared = cfg.model_copy(update={"shared": cfg.shared.model_copy(update={"uri": "s3://b/s"})})
    assert DatasetState.of(shared).state_uri == "s3://b/s", "the shared store when there is one"
