"""The manifest: one row per image with its split; its content hash is the dataset version."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from skin.base.labels import CLASSES
from skin.data.storage import is_s3
from skin.data.tables import is_csv, read_table, write_table

SPLITS: tuple[str, ...] = ("train", "dev", "test")
REQUIRED = ["key", "label", "split", "keep", "fingerprint", "source"]
HASHED = ["key", "label", "split", "keep", "fingerprint"]
CLUSTER = (
    "duplicate_cluster"  # the audit's near-duplicate cluster: grouped by the split like a lesion
)


class ManifestError(ValueError):
    """The manifest breaks its schema; the message names the rows and the rule."""


def frame_hash(df: pd.DataFrame) -> str:
    """Order-independent content hash of a table (rows sorted by every column, in order)."""
    ordered = df.sort_values(list(df.columns)).reset_index(drop=True)
    blob = ordered.to_csv(index=False, lineterminator="\n").encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def manifest_hash(df: pd.DataFrame) -> str:
    """The dataset version: what is in each split, and what train keeps."""
    return frame_hash(df[HASHED].astype({"keep": bool}))


def validate(df: pd.DataFrame, classes: tuple[str, ...] | list[str] = CLASSES) -> None:
    """Enforce the schema: unique keys, known labels and splits, no leakage across splits."""
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise ManifestError(f"manifest lacks columns {missing}")
    dup = df["key"][df["key"].duplicated()]
    if len(dup):
        raise ManifestError(f"{len(dup)} duplicate keys, e.g. {dup.iloc[0]!r}")
    bad_label = sorted(set(df["label"]) - set(classes))
    if bad_label:
        raise ManifestError(f"unknown labels {bad_label}; known: {list(classes)}")
    bad_split = sorted(set(df["split"]) - set(SPLITS))
    if bad_split:
        raise ManifestError(f"unknown splits {bad_split}; known: {list(SPLITS)}")
    dropped_outside_train = df[(~df["keep"].astype(bool)) & (df["split"] != "train")]
    if len(dropped_outside_train):
        raise ManifestError(
            f"{len(dropped_outside_train)} rows outside train have keep=False;"
            " undersampling applies to train only"
        )
    groups = (
        ("fingerprint", "identical files"),
        ("lesion_id", "images of one lesion"),
        (CLUSTER, "near-duplicate images"),
    )
    for column, what in groups:
        if column not in df.columns:
            continue
        known = df[df[column].notna() & (df[column].astype(str) != "")]
        straddling = known.groupby(column)["split"].nunique()
        straddling = straddling[straddling > 1]
        if len(straddling):
            raise ManifestError(
                f"{len(straddling)} groups of {what} straddle splits"
                f" (leakage), e.g. {column}={straddling.index[0]!r}"
            )


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Rows are classes; columns train (before/after undersampling), dev, test."""
    counts = pd.DataFrame(
        {
            "train": df[df["split"] == "train"].groupby("label").size(),
            "train_kept": df[(df["split"] == "train") & df["keep"]].groupby("label").size(),
            "dev": df[df["split"] == "dev"].groupby("label").size(),
            "test": df[df["split"] == "test"].groupby("label").size(),
        }
    )
    counts = counts.fillna(0).astype(int)
    counts.loc["total"] = counts.sum()
    return counts


def write(df: pd.DataFrame, uri: str) -> str:
    """Check, then write Parquet (or CSV by suffix) to a path or s3:// URI; returns the hash."""
    validate(df)
    write_table(df, uri)
    return manifest_hash(df)


def read(uri: str) -> pd.DataFrame:
    """Read a manifest written as Parquet or CSV, and check it."""
    if not is_s3(uri) and not Path(uri).is_file():
        raise ManifestError(f"manifest not found: {uri}")
    df = read_table(uri, csv_dtype={"lesion_id": "string"})
    if is_csv(uri):
        df["keep"] = df["keep"].astype(str).str.lower().isin(["true", "1"])
    validate(df)
    return df
