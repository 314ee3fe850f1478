"""Prefect tasks for the data stages: list, split, undersample, decode cache. Logic lives in skin."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from skin import manifest as mf
from skin.config import PipelineConfig
from skin.datastages import (
    ListingRef,
    ManifestRef,
    balance,
    list_images,
    read_listing,
    save_listing,
    save_manifest,
    source_uri,
    split_images,
    split_key,
)
from tasks.caching import DATA_CODE, IO_RETRIES, keyed_on


@task(name="list-images", cache_policy=NO_CACHE, **IO_RETRIES)
def list_task(config: dict[str, Any]) -> ListingRef:
    """Always runs: the listing is how a re-run notices new, changed or removed images."""
    cfg = PipelineConfig.model_validate(config)
    listing = list_images(cfg.data)
    return save_listing(listing, cfg.state_uri, cfg.data.uri)


@task(
    name="split",
    cache_policy=keyed_on(
        "listing_fingerprint",
        "previous_uri",
        config_sections=(
            "split.fractions",
            "split.seed",
            "split.group_by_lesion",
            "data.uri",
            "work_dir",
            "shared.uri",
        ),
        code=DATA_CODE,
    ),
    **IO_RETRIES,
)
def split_task(
    listing_uri: str, listing_fingerprint: str, config: dict[str, Any], previous_uri: str | None
) -> ManifestRef:
    """Stratified split of a listing; keeps the splits of `previous` (the dataset's latest)."""
    cfg = PipelineConfig.model_validate(config)
    previous = mf.read(previous_uri) if previous_uri else None
    df = split_images(read_listing(listing_uri), source_uri(cfg.data.uri), cfg.split, previous)
    lineage = {
        "listing_fingerprint": listing_fingerprint,
        "previous_uri": previous_uri,
        "split_key": split_key(cfg.split),
    }
    return save_manifest(
        df, cfg.state_uri, cfg.data.uri, latest=False, stage="split", lineage=lineage
    )


@task(
    name="undersample",
    cache_policy=keyed_on(
        "split_hash",
        config_sections=(
            "split.balance",
            "split.majority_class",
            "split.seed",
            "data.uri",
            "work_dir",
            "shared.uri",
        ),
        code=DATA_CODE,
    ),
    **IO_RETRIES,
)
def undersample_task(split: ManifestRef, split_hash: str, config: dict[str, Any]) -> ManifestRef:
    """Balance train; the result carries the split's lineage and becomes the dataset's latest."""
    cfg = PipelineConfig.model_validate(config)
    df = balance(mf.read(split.uri), cfg.split)
    lineage = {
        "listing_fingerprint": split.listing_fingerprint,
        "previous_uri": split.previous_uri,
        "split_key": split.split_key,
    }
    return save_manifest(df, cfg.state_uri, cfg.data.uri, latest=True, lineage=lineage)
