"""Tables as files: CSV when the name ends in .csv, else Parquet, at a local path or s3:// URI."""

from __future__ import annotations

import io

import pandas as pd

from skin.data.storage import read_uri, write_uri

TABLE_SUFFIXES = (".parquet", ".csv")


def is_csv(uri: str) -> bool:
    """Whether a table file is CSV (by its name, any case); anything else is Parquet."""
    return uri.lower().endswith(".csv")


def write_table(frame: pd.DataFrame, uri: str) -> None:
    """Write `frame` without its index, atomically, in the format its name says."""
    buf = io.BytesIO()
    if is_csv(uri):
        frame.to_csv(buf, index=False)
    else:
        frame.to_parquet(buf, index=False)
    write_uri(uri, buf.getvalue())


def read_table(uri: str, csv_dtype: dict[str, str] | None = None) -> pd.DataFrame:
    """Read a table `write_table` wrote; `csv_dtype` types CSV columns that Parquet keeps."""
    data = io.BytesIO(read_uri(uri))
    return pd.read_csv(data, dtype=csv_dtype) if is_csv(uri) else pd.read_parquet(data)
