"""The data stages as functions over references: list a store, split it, save a versioned manifest."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass

import pandas as pd

from skin import manifest as mf
from skin.balance import undersample
from skin.config import DataConfig, SplitConfig
from skin.listing import Listing, list_dataset
from skin.split import assign_splits
from skin.storage import StorageError, is_s3, join_uri, open_store, read_uri, write_uri

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ManifestRef:
    """Where a manifest lives and which dataset version it is: what later stages take."""

    uri: str
    hash: str
    dataset: str
    images: int

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def dataset_id(data_uri: str) -> str:
    """A readable, unique folder name for a dataset URI (manifests and caches live under it)."""
    normal = data_uri.rstrip("/")
    if not is_s3(normal):
        from pathlib import Path

        normal = str(Path(normal).expanduser().resolve())
    slug = re.sub(r"[^A-Za-z0-9]+", "-", normal.split("://")[-1]).strip("-")[-40:]
    return f"{slug}-{hashlib.sha256(normal.encode()).hexdigest()[:8]}"


def source_uri(uri: str) -> str:
    """The data root as manifests record it: S3 URIs as given, folders made absolute."""
    if is_s3(uri):
        return uri.rstrip("/")
    from pathlib import Path

    return str(Path(uri).expanduser().resolve())


def list_images(data: DataConfig) -> Listing:
    """Stage 1: list the store (the cheap step that detects change)."""
    return list_dataset(open_store(data.uri), data.layout, data.classes)


def build_manifest(
    listing: Listing,
    source: str,
    split: SplitConfig,
    previous: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Stages 2-3: split (stable against `previous`) and balance train; returns the manifest."""
    images = listing.images.copy()
    images["split"] = assign_splits(
        images, split.fractions, split.seed, previous, split.group_by_lesion
    ).to_numpy()
    images["source"] = source
    out = undersample(images, split.balance, split.majority_class, split.seed)
    columns = [*mf.REQUIRED, *[c for c in out.columns if c not in mf.REQUIRED]]
    return out[columns]


def manifests_root(work_dir: str, data_uri: str) -> str:
    return join_uri(work_dir, "manifests", dataset_id(data_uri))


def save_manifest(df: pd.DataFrame, work_dir: str, data_uri: str) -> ManifestRef:
    """Write the manifest under its own hash (immutable) and point `latest.json` at it."""
    digest = mf.manifest_hash(df)
    root = manifests_root(work_dir, data_uri)
    uri = join_uri(root, f"{digest}.parquet")
    mf.write(df, uri)
    ref = ManifestRef(uri=uri, hash=digest, dataset=dataset_id(data_uri), images=len(df))
    write_uri(join_uri(root, "latest.json"), json.dumps(ref.to_dict(), indent=2).encode())
    return ref


def latest_manifest(work_dir: str, data_uri: str) -> ManifestRef | None:
    """The dataset's newest manifest, or None the first time."""
    try:
        raw = read_uri(join_uri(manifests_root(work_dir, data_uri), "latest.json"))
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
