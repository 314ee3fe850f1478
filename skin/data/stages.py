"""The data stages as functions over references: list a store, split it, save a versioned manifest."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass

import pandas as pd

from skin.base.config import DataConfig, SplitConfig, config_digest
from skin.data import manifest as mf
from skin.data.balance import undersample
from skin.data.listing import Listing, list_dataset
from skin.data.location import DataLocation, DatasetState
from skin.data.split import split_with_moves
from skin.data.storage import StorageError, join_uri, open_store, read_uri, write_uri
from skin.data.tables import read_table, write_table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ManifestRef:
    """Where a manifest lives and which dataset version it is: what later stages take."""

    uri: str
    hash: str
    dataset: str
    images: int
    # Lineage, so a re-run can tell "same inputs as last time" from "the data grew".
    listing_fingerprint: str | None = None
    previous_uri: str | None = None
    split_key: str | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


SPLIT_ENTRIES = ("fractions", "seed", "group_by_lesion")  # balance settings do not move rows


def split_key(split: SplitConfig) -> str:
    """The split settings that decide assignments: a manifest made with others is no `previous`."""
    return config_digest(split, SPLIT_ENTRIES)


def previous_for(
    latest: ManifestRef | None, listing_fingerprint: str, split: SplitConfig
) -> str | None:
    """Which earlier manifest a split should stay stable against.

    None when there is none or it was made with other split settings (a fresh split); the same
    `previous` as last time when the listing is unchanged (so the result is reused); else latest.
    """
    if latest is None or latest.split_key != split_key(split):
        return None
    if latest.listing_fingerprint == listing_fingerprint:
        return latest.previous_uri
    return latest.uri


def dataset_id(data_uri: str) -> str:
    """A readable, unique folder name for a dataset URI (manifests and caches live under it)."""
    return DataLocation(data_uri.removeprefix("file://")).dataset_id


def source_uri(uri: str) -> str:
    """The data root as manifests record it: S3 URIs as given, folders (or file://) absolute."""
    return DataLocation(uri.removeprefix("file://")).source


def list_images(data: DataConfig) -> Listing:
    """Stage 1: list the store (the cheap step that detects change)."""
    return list_dataset(open_store(data.uri), data.layout, data.classes)


@dataclass(frozen=True)
class ListingRef:
    """A saved listing: content-addressed by its fingerprint, with its counts and skips."""

    uri: str
    fingerprint: str
    layout: str
    images: int
    counts: dict[str, int]
    skipped: dict[str, int]
    skipped_uri: str = ""  # every object that did not make it in, with the reason (CSV)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def listings_root(state: DatasetState) -> str:
    return join_uri(state.state_uri, "listings", dataset_id(state.data_uri))


def skipped_uri(state: DatasetState, fingerprint: str) -> str:
    """Where the listing with this fingerprint keeps its skipped objects (key, reason)."""
    return join_uri(listings_root(state), f"{fingerprint}.skipped.csv")


def read_skipped(uri: str) -> pd.DataFrame:
    """The skipped objects of a listing; an empty table when none were recorded."""
    try:
        return read_table(uri, csv_dtype={"key": "string", "reason": "string"})
    except (FileNotFoundError, StorageError, pd.errors.EmptyDataError):
        return pd.DataFrame(columns=["key", "reason"])


def save_listing(listing: Listing, state: DatasetState) -> ListingRef:
    """Keep what was listed (and what was skipped, with why) under its own fingerprint."""
    fp = listing.fingerprint
    uri = join_uri(listings_root(state), f"{fp}.parquet")
    write_table(listing.images, uri)
    skipped = skipped_uri(state, fp)
    write_table(listing.skipped, skipped)
    return ListingRef(
        uri=uri,
        fingerprint=fp,
        layout=listing.layout,
        images=len(listing.images),
        counts={k: int(v) for k, v in listing.counts().items()},
        skipped={k: int(v) for k, v in listing.skip_counts().items()},
        skipped_uri=skipped,
    )


def read_listing(uri: str) -> pd.DataFrame:
    return read_table(uri)


def split_images(
    images: pd.DataFrame, source: str, split: SplitConfig, previous: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Stage 2: assign splits (stable against `previous`); every row kept for now."""
    out = images.copy()
    result = split_with_moves(out, split.fractions, split.seed, previous, split.group_by_lesion)
    out["split"] = result.split.to_numpy()
    if len(result.moves):
        log.warning("%s", result.describe_moves())
    out["source"] = source
    out["keep"] = True
    columns = [*mf.REQUIRED, *[c for c in out.columns if c not in mf.REQUIRED]]
    return out[columns]


def balance(manifest: pd.DataFrame, split: SplitConfig) -> pd.DataFrame:
    """Stage 3: class balance of train (the notebook's NV undersampling by default)."""
    return undersample(manifest, split.balance, split.majority_class, split.seed)


def build_manifest(
    listing: Listing,
    source: str,
    split: SplitConfig,
    previous: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Stages 2-3 in one call: split, then balance train."""
    return balance(split_images(listing.images, source, split, previous), split)


def manifests_root(state: DatasetState) -> str:
    return join_uri(state.state_uri, "manifests", dataset_id(state.data_uri))


def save_manifest(
    df: pd.DataFrame,
    state: DatasetState,
    *,
    latest: bool = True,
    stage: str = "manifest",
    lineage: dict[str, str | None] | None = None,
) -> ManifestRef:
    """Write the manifest under its own hash (immutable); `latest` moves the dataset's pointer."""
    digest = mf.manifest_hash(df)
    root = manifests_root(state)
    uri = join_uri(root, f"{stage}-{digest}.parquet")
    mf.write(df, uri)
    ref = ManifestRef(
        uri=uri, hash=digest, dataset=dataset_id(state.data_uri), images=len(df), **(lineage or {})
    )
    if latest:
        set_latest(ref, state)
    return ref


def set_latest(ref: ManifestRef, state: DatasetState) -> None:
    """Point the dataset's `latest.json` at a manifest (what 'latest' resolves to)."""
    root = manifests_root(state)
    write_uri(join_uri(root, "latest.json"), json.dumps(ref.to_dict(), indent=2).encode())


def latest_manifest(state: DatasetState) -> ManifestRef | None:
    """The dataset's newest manifest, or None the first time."""
    try:
        raw = read_uri(join_uri(manifests_root(state), "latest.json"))
    except (FileNotFoundError, StorageError):
        return None
    return ManifestRef(**json.loads(raw))


def manifest_ref(uri: str) -> ManifestRef:
    """A reference for any manifest file the user hands over."""
    df = mf.read(uri)
    source = str(df["source"].iloc[0]) if len(df) else ""
    return ManifestRef(
        uri=uri, hash=mf.manifest_hash(df), dataset=dataset_id(source), images=len(df)
    )
