"""The data stages as functions over references: list a store, split it, save a versioned manifest."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from skin.base.config import AuditConfig, DataConfig, SplitConfig, config_digest, digest
from skin.base.runs import cache_root
from skin.data import manifest as mf
from skin.data.audit import (
    AuditRef,
    attach_clusters,
    audit_images,
    audit_key,
    cluster_sheet,
    read_findings_table,
    save_audit,
    summary_markdown,
    thumbnails,
)
from skin.data.balance import undersample
from skin.data.exclusions import excluded, reviewed_keys
from skin.data.label_issues import label_issues, rank_labels
from skin.data.leaks import cross_split_pairs, leak_effect, leaked_keys
from skin.data.listing import Listing, list_dataset
from skin.data.location import DataLocation, DatasetState
from skin.data.manifest import frame_hash
from skin.data.sheets import contact_sheet
from skin.data.split import split_with_moves
from skin.data.storage import (
    StorageError,
    exists_uri,
    join_uri,
    open_store,
    read_uri,
    write_uri,
)
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
    audit_uri: str | None = None  # the audit the split grouped (and excluded) by

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


def audits_root(work_dir: str, data_uri: str) -> str:
    return join_uri(work_dir, "audits", dataset_id(data_uri))


def label_issues_uri(work_dir: str, data_uri: str) -> str:
    """Where the dataset's latest suspect labels (from `skin audit --cv-run`) are kept."""
    return join_uri(audits_root(work_dir, data_uri), "label_issues.csv")


def audit_inputs(audit: AuditConfig, state_uri: str, data_uri: str) -> tuple[str | None, str]:
    """The dataset's label issues (when `audit.exclude` names them and they exist) and one hash
    of the contents of every file the audit's exclusions read: what its cache key needs."""
    suspects = label_issues_uri(state_uri, data_uri)
    wanted = "label_issues" in audit.exclude and exists_uri(suspects)
    parts = [suspects if wanted else None, audit.exclude_keys]
    blobs = [
        hashlib.sha256(read_uri(u)).hexdigest() if u and exists_uri(u) else None for u in parts
    ]
    return parts[0], digest(blobs)


def audit_listing(
    listing: ListingRef,
    data: DataConfig,
    audit: AuditConfig,
    state_uri: str,
    work_dir: str,
    embed: Callable[[list[str]], np.ndarray] | None = None,
    suspects_uri: str | None = None,
) -> AuditRef:
    """Stage 1b: audit a listing (near-duplicates, unusable images) into its own folder, named by
    the listing's fingerprint, the audit settings and its input files, with its Markdown summary
    beside it; what `audit.exclude`/`exclude_keys` leave out of the split is listed there too."""
    images = read_listing(listing.uri)
    store = open_store(data.uri)
    findings = audit_images(store, images, audit, cache_root(work_dir), embed)
    suspects = read_table(suspects_uri, csv_dtype={"key": "string"}) if suspects_uri else None
    keys = reviewed_keys(audit.exclude_keys) if audit.exclude_keys else None
    d = findings.duplicates
    out = excluded(images, audit.exclude, d.clusters, findings.unusable, suspects, keys)
    findings = replace(findings, excluded=out)
    contents = (
        frame_hash(suspects.astype("string")) if suspects is not None else None,
        digest(keys) if keys else None,
    )
    name = audit_key(listing.fingerprint, audit, *contents)
    root = join_uri(audits_root(state_uri, data.uri), name)
    ref = save_audit(findings, root, listing.fingerprint)
    write_uri(join_uri(root, "summary.md"), summary_markdown(ref, findings).encode())
    clusters = findings.duplicates.clusters
    if len(clusters):
        sheet = cluster_sheet(store, images, clusters, cache_root(work_dir))
        write_uri(join_uri(root, "clusters.png"), sheet)
    return ref


@dataclass(frozen=True)
class SuspectReport:
    """Suspect labels from a CV run: the table, the contact sheet, and counts per class."""

    folder: str
    label_issues_uri: str
    sheet_uri: str
    suspects: int
    ranked: int
    per_class: dict[str, int]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def audit_labels(
    oof: pd.DataFrame,
    classes: tuple[str, ...],
    listing: ListingRef,
    data_uri: str,
    folder: Path,
    work_dir: str,
    top: int = 50,
) -> SuspectReport:
    """Rank a CV run's out-of-fold predictions by label quality; write `label_issues.csv` (key,
    given_label, suggested_label, score) and a contact sheet of the worst `top` into `folder`."""
    ranked = rank_labels(oof, classes)
    issues = label_issues(ranked)
    folder.mkdir(parents=True, exist_ok=True)
    issues.to_csv(folder / "label_issues.csv", index=False)
    ranked.to_csv(folder / "label_ranking.csv", index=False)
    worst = issues.head(top)
    images = read_listing(listing.uri)
    pixels = thumbnails(open_store(data_uri), images, worst["key"].tolist(), cache_root(work_dir))
    captions = [
        f"{Path(r.key).stem}\ngiven {r.given_label} -> {r.suggested_label} {r.score:.2f}"
        for r in worst.itertuples()
    ]
    (folder / "label_issues.png").write_bytes(
        contact_sheet(list(zip(pixels, captions, strict=True)))
    )
    return SuspectReport(
        folder=str(folder),
        label_issues_uri=str(folder / "label_issues.csv"),
        sheet_uri=str(folder / "label_issues.png"),
        suspects=len(issues),
        ranked=len(ranked),
        per_class={str(k): int(v) for k, v in issues["given_label"].value_counts().items()},
    )


@dataclass(frozen=True)
class LeakReport:
    """An audit held against a manifest: pairs across its splits, and a run's metric change."""

    leaks_uri: str
    pairs: int
    test_images_leaked: int
    effect_uri: str | None = None
    effect: dict[str, dict[str, float]] | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def audit_against(
    audit: AuditRef,
    manifest: ManifestRef,
    classes: tuple[str, ...],
    run_report: Path | None = None,
) -> LeakReport:
    """The audit's near-duplicate pairs that straddle `manifest`'s splits ("would have
    leaked"), and with a run's report folder, its test metrics with and without the leaked
    test images."""
    leaks = cross_split_pairs(mf.read(manifest.uri), read_findings_table(audit, "pairs"))
    uri = join_uri(audit.uri, f"leaks-{manifest.hash}.csv")
    write_table(leaks, uri)
    leaked = leaked_keys(leaks, "test")
    if run_report is None:
        return LeakReport(uri, len(leaks), len(leaked))
    predictions = run_report / "predictions_test.parquet"
    if not predictions.is_file():
        raise FileNotFoundError(
            f"no test predictions at {predictions}: evaluate the run first (skin evaluate)"
        )
    effect = leak_effect(pd.read_parquet(predictions), leaked, classes)
    effect_uri = join_uri(audit.uri, f"effect-{manifest.hash}-{run_report.parent.name}.csv")
    write_table(effect.reset_index(), effect_uri)
    return LeakReport(uri, len(leaks), len(leaked), effect_uri, effect.to_dict(orient="index"))


def split_input(listing: ListingRef, audit: AuditRef | None, group: bool = True) -> pd.DataFrame:
    """The listing the split takes: less what the audit was asked to exclude, with each image's
    near-duplicate cluster when audited (and `group`)."""
    images = read_listing(listing.uri)
    if audit is None:
        return images
    if audit.excluded:
        gone = set(read_findings_table(audit, "excluded")["key"])
        log.warning(
            "audit: %d images excluded from the split (%s)", len(gone), audit.table("excluded")
        )
        images = images[~images["key"].isin(gone)].reset_index(drop=True)
    if not group:
        return images
    return attach_clusters(images, read_findings_table(audit, "clusters"))


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
