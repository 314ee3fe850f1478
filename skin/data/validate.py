"""Check a dataset without training: every skipped object and every undecodable image, with why."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pandas as pd

from skin.base.config import DataConfig
from skin.data.images import ImageDecodeError, decode
from skin.data.listing import Listing, list_dataset
from skin.data.storage import StorageError, open_store

CHECK_SIZE = 32  # decoding at a small size still reads every byte of the file


@dataclass
class ValidationReport:
    """Good images per class, and one row per problem (`key`, `stage`, `reason`)."""

    layout: str
    good: pd.Series
    problems: pd.DataFrame

    def summary(self) -> pd.DataFrame:
        if self.problems.empty:
            return pd.DataFrame(columns=["stage", "reason", "count"])
        return (
            self.problems.groupby(["stage", "reason"])
            .size()
            .rename("count")
            .reset_index()
            .sort_values("count", ascending=False, ignore_index=True)
        )


def _short(reason: str) -> str:
    """Group messages by their cause, not by the file-specific detail after the colon."""
    return reason.split(":", 1)[0]


def decode_problems(
    listing: Listing, store_uri: str, *, progress: Callable[[int], None] | None = None
) -> pd.DataFrame:
    """Fetch and decode every listed image (threads); return the ones that fail and why."""
    store = open_store(store_uri)
    keys = listing.images["key"].tolist()

    def check(key: str) -> tuple[str, str | None]:
        try:
            decode(store.get(key), CHECK_SIZE)
        except (ImageDecodeError, StorageError) as err:
            return key, str(err)
        finally:
            if progress:
                progress(1)
        return key, None

    with ThreadPoolExecutor(max_workers=min(32, (os.cpu_count() or 2) * 4)) as pool:
        bad = [(k, e) for k, e in pool.map(check, keys) if e is not None]
    return pd.DataFrame(bad, columns=["key", "reason"])


def validate_dataset(
    data: DataConfig, progress: Callable[[int], None] | None = None
) -> ValidationReport:
    """List (skips with reasons), then decode every image (failures with reasons)."""
    listing = list_dataset(open_store(data.uri), data.layout, data.classes)
    bad = decode_problems(listing, data.uri, progress=progress)
    problems = pd.concat(
        [
            listing.skipped.assign(stage="listing"),
            bad.assign(stage="decode", reason=bad["reason"].map(_short)),
        ],
        ignore_index=True,
    )[["key", "stage", "reason"]]
    good = listing.images[~listing.images["key"].isin(bad["key"])]["label"].value_counts()
    return ValidationReport(listing.layout, good.sort_index(), problems)
