"""Prefect tasks for the data stages: list, split, undersample. Logic lives in skin.

Each task takes the typed config the flow validated once, and references (a listing, a manifest)
that carry their content hashes: the cache key is made of exactly those, the config entries the
stage reads, and its code.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from skin.base.config import PipelineConfig
from skin.data import manifest as mf
from skin.data.location import DatasetState
from skin.data.stages import (
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
from tasks.caching import IO_RETRIES, Names, keyed_on

# Where a data stage writes (its result names a file there) and which dataset it is.
_STATE = ("data.uri", "work_dir", "shared.uri")


@task(name="list-images", cache_policy=NO_CACHE, **IO_RETRIES)
def list_task(config: PipelineConfig) -> ListingRef:
    """Always runs: the listing is how a re-run notices new, changed or removed images."""
    listing = list_images(config.data)
    return save_listing(listing, DatasetState.of(config))


@task(
    name="split",
    cache_policy=keyed_on(
        "listing.fingerprint",
        "previous.hash",
        config_sections=("split.fractions", "split.seed", "split.group_by_lesion", *_STATE),
        names=Names(files=("uri",)),
    ),
    **IO_RETRIES,
)
def split_task(
    listing: ListingRef, config: PipelineConfig, previous: ManifestRef | None = None
) -> ManifestRef:
    """Stratified split of a listing; keeps the splits of `previous` (the dataset's latest)."""
    prev = mf.read(previous.uri) if previous else None
    df = split_images(read_listing(listing.uri), source_uri(config.data.uri), config.split, prev)
    lineage = {
        "listing_fingerprint": listing.fingerprint,
        "previous_uri": previous.uri if previous else None,
        "split_key": split_key(config.split),
    }
    return save_manifest(df, DatasetState.of(config), latest=False, stage="split", lineage=lineage)


@task(
    name="undersample",
    cache_policy=keyed_on(
        "split.hash",
        config_sections=("split.balance", "split.majority_class", "split.seed", *_STATE),
        names=Names(files=("uri",)),
    ),
    **IO_RETRIES,
)
def undersample_task(split: ManifestRef, config: PipelineConfig) -> ManifestRef:
    """Balance train; the result carries the split's lineage and becomes the dataset's latest."""
    df = balance(mf.read(split.uri), config.split)
    lineage = {
        "listing_fingerprint": split.listing_fingerprint,
        "previous_uri": split.previous_uri,
        "split_key": split.split_key,
    }
    return save_manifest(df, DatasetState.of(config), latest=True, lineage=lineage)
