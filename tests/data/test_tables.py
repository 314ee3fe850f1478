"""Tables as files: one writer and reader for CSV and Parquet, locally and on S3."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from skin.data.storage import exists_uri, read_uri
from skin.data.tables import read_table, write_table
from skin.serve.predict import PredictError, write_frame

FRAME = pd.DataFrame({"key": ["a.jpg", "b.jpg"], "probability": [0.25, 0.75]})


@pytest.mark.parametrize("name", ["t.parquet", "t.csv", "t.CSV"])
def test_a_table_reads_back_as_written_in_the_format_its_name_says(
    tmp_path: Path, name: str
) -> None:
    uri = str(tmp_path / "deep" / name)
    write_table(FRAME, uri)
    looks_like_csv = read_uri(uri).startswith(b"key,probability")
    assert looks_like_csv == name.lower().endswith(".csv"), f"{name}: wrong format on disk"
    pd.testing.assert_frame_equal(read_table(uri), FRAME)


@pytest.mark.server
def test_a_table_on_s3_reads_back_and_is_seen_to_exist(s3_client: Any, bucket: str) -> None:
    uri = f"s3://{bucket}/tables/t.parquet"
    assert not exists_uri(uri), "nothing written yet"
    write_table(FRAME, uri)
    assert exists_uri(uri), "the object is there"
    assert not exists_uri(f"s3://{bucket}/tables/other.parquet"), "another key is not"
    pd.testing.assert_frame_equal(read_table(uri), FRAME)


def test_predictions_never_overwrite_a_file(tmp_path: Path) -> None:
    out = tmp_path / "p.csv"
    write_frame(FRAME, str(out))
    before = out.read_bytes()
    with pytest.raises(PredictError, match="already exists"):
        write_frame(FRAME.iloc[:1], str(out))
    assert out.read_bytes() == before, "the refused write left the file alone"
    with pytest.raises(PredictError, match=r"must end in \.parquet or \.csv"):
        write_frame(FRAME, str(tmp_path / "p.jpg"))
    assert not (tmp_path / "p.jpg").exists()
