"""Prefect tasks for the data stages: list, audit, split, undersample. Logic lives in skin.

Each task takes the typed config the flow validated once, and references (a listing, a manifest)
that carry their content hashes: the cache key is made of exactly those, the config entries the
stage reads, and its code.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from skin.base.config import PipelineConfig
from skin.base.runs import cache_root
from skin.data import manifest as mf
from skin.data.audit import AUDIT_ENTRIES, AuditRef, thumbnails
from skin.data.location import DatasetState
from skin.data.stages import (
    ListingRef,
    ManifestRef,
    audit_listing,
    balance,
    list_images,
    read_listing,
    save_listing,
    save_manifest,
    source_uri,
    split_images,
    split_input,
    split_key,
)
from skin.data.storage import open_store
from tasks.caching import IO_RETRIES, Names, keyed_on

# Where a data stage writes (its result names a file there) and which dataset it is.
_STATE = ("data.uri", "work_dir", "shared.uri")


@task(name="list-images", cache_policy=NO_CACHE, **IO_RETRIES)
def list_task(config: PipelineConfig) -> ListingRef:
    """Always runs: the listing is how a re-run notices new, changed or removed images."""
    listing = list_images(config.data)
    return save_listing(listing, DatasetState.of(config))


@task(
    name="audit",
    cache_policy=keyed_on(
        "listing.fingerprint",
        "inputs_hash",
        "backbone",
        config_sections=(*(f"audit.{e}" for e in AUDIT_ENTRIES), *_STATE),
        names=Names(files=("clusters_uri",)),
    ),
    **IO_RETRIES,
)
def audit_task(
    listing: ListingRef,
    config: PipelineConfig,
    suspects_uri: str | None = None,
    inputs_hash: str | None = None,
    backbone: str | None = None,
) -> AuditRef:
    """Near-duplicates and unusable images of a listing, and what `audit.exclude` leaves out
    (`suspects_uri`: the dataset's label issues); reads the store, never writes to it.
    `inputs_hash`: the contents of the label issues and of `audit.exclude_keys` (`audit_inputs`);
    `backbone`: the model whose embeddings confirm hash pairs (`audit.embeddings`), or None."""
    embed = None
    if backbone is not None:
        # torch and timm, only when embeddings confirm pairs: a cached run never imports them
        from skin.train.features import image_embedder
        from skin.train.model import build_model, input_spec

        images = read_listing(listing.uri)
        store, root = open_store(config.data.uri), cache_root(config.work_dir)
        net = build_model(
            config.model.name, 1, pretrained=config.model.pretrained, weights=config.model.weights
        )
        load = lambda keys, side: thumbnails(store, images, keys, root, side)  # noqa: E731
        embed = image_embedder(net, input_spec(net), load)
    return audit_listing(
        listing,
        config.data,
        config.audit,
        config.state_uri,
        config.work_dir,
        embed=embed,
        suspects_uri=suspects_uri,
    )


@task(
    name="split",
    cache_policy=keyed_on(
        "listing.fingerprint",
        "previous.hash",
        "audit.hash",
        config_sections=(
            "split.fractions",
            "split.seed",
            "split.group_by_lesion",
            "audit.group_near_duplicates",
            *_STATE,
        ),
        names=Names(files=("uri",)),
    ),
    **IO_RETRIES,
)
def split_task(
    listing: ListingRef,
    config: PipelineConfig,
    previous: ManifestRef | None = None,
    audit: AuditRef | None = None,
) -> ManifestRef:
    """Stratified split of a listing (near-duplicate clusters kept together like lesions when
    audited); keeps the splits of `previous` (the dataset's latest)."""
    prev = mf.read(previous.uri) if previous else None
    images = split_input(listing, audit, config.audit.group_near_duplicates)
    df = split_images(images, source_uri(config.data.uri), config.split, prev)
    lineage = {
        "listing_fingerprint": listing.fingerprint,
        "previous_uri": previous.uri if previous else None,
        "split_key": split_key(config.split),
        "audit_uri": audit.uri if audit else None,
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
        "audit_uri": split.audit_uri,
    }
    return save_manifest(df, DatasetState.of(config), latest=True, lineage=lineage)
