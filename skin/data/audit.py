"""The audit stage: every listed image read once, hashed and measured; near-duplicate clusters
and unusable images found and saved under the listing's fingerprint and the audit settings.
The audit reads the store and never writes to it."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from skin.base.config import AuditConfig, config_digest, digest
from skin.data.duplicates import VARIANTS, Embed, NearDuplicates, find_near_duplicates, image_codes
from skin.data.exclusions import EXCLUDED_COLUMNS
from skin.data.fetch import Fetcher
from skin.data.imagecache import objects_dir
from skin.data.images import ImageDecodeError, decode
from skin.data.manifest import CLUSTER, frame_hash
from skin.data.quality import MEASURES, QualityLimits, flag, measure
from skin.data.sheets import contact_sheet
from skin.data.storage import Store, join_uri, read_uri, write_uri
from skin.data.tables import read_table, write_table

log = logging.getLogger(__name__)

# The settings that change what the audit finds (workers only change how fast).
AUDIT_ENTRIES = (
    "image_size",
    "max_distance",
    "embeddings",
    "min_cosine",
    "max_bucket",
    "min_side",
    "dark",
    "bright",
    "flat",
    "blur_ratio",
    "exclude",
    "exclude_keys",
)


@dataclass(frozen=True)
class Scan:
    """Every decodable image's hash codes [n, VARIANTS, 32] and measures; the undecodable ones."""

    keys: list[str]
    fingerprints: list[str]
    codes: np.ndarray
    measures: pd.DataFrame
    failed: pd.DataFrame  # key, error


def _scan_one(path: Path | None, error: str | None, size: int) -> tuple[np.ndarray, dict] | str:
    """One image: its codes and measures, or why it cannot be read."""
    if path is None:
        return error or "not fetched"
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
        square = decode(data, size)
    except (ImageDecodeError, Image.DecompressionBombError, OSError, ValueError) as err:
        return str(err)  # listed as unreadable; the decode stage reports it as it always has
    return image_codes(square), measure(square, width, height)


def scan(
    store: Store, images: pd.DataFrame, size: int, fetch_root: str | Path, workers: int = 2
) -> Scan:
    """Fetch (into the shared object cache the decode stage reuses) and hash/measure each image."""
    keys, fps = images["key"].tolist(), images["fingerprint"].tolist()
    fetched = sorted(
        Fetcher(objects_dir(fetch_root)).fetch(store, keys, fps), key=lambda f: f.index
    )
    with ThreadPoolExecutor(max_workers=workers) as pool:  # Pillow and numpy release the GIL
        results = list(pool.map(lambda f: _scan_one(f.path, f.error, size), fetched))
    ok = [i for i, r in enumerate(results) if not isinstance(r, str)]
    failed = [(keys[i], r) for i, r in enumerate(results) if isinstance(r, str)]
    codes = np.stack([results[i][0] for i in ok]) if ok else np.zeros((0, VARIANTS, 32), np.uint8)
    measures = pd.DataFrame([results[i][1] for i in ok], columns=MEASURES)
    measures.insert(0, "key", [keys[i] for i in ok])
    return Scan(
        [keys[i] for i in ok],
        [fps[i] for i in ok],
        codes,
        measures,
        pd.DataFrame(failed, columns=["key", "error"]),
    )


def thumbnails(
    store: Store, images: pd.DataFrame, keys: list[str], fetch_root: str | Path, side: int = 96
) -> list[np.ndarray | None]:
    """Small decoded copies of some listed images (None where unreadable), for contact sheets."""
    rows = images.set_index("key").reindex(keys)
    fps = rows["fingerprint"].fillna("").tolist()
    out: list[np.ndarray | None] = [None] * len(keys)
    for got in Fetcher(objects_dir(fetch_root)).fetch(store, keys, fps):
        if got.path is not None:
            try:
                out[got.index] = decode(got.path.read_bytes(), side)
            except ImageDecodeError:
                continue
    return out


SHEET_CLUSTERS = 8  # clusters on the contact sheet, largest first
SHEET_MEMBERS = 6  # members shown per cluster


def cluster_sheet(
    store: Store, images: pd.DataFrame, clusters: pd.DataFrame, fetch_root: str | Path
) -> bytes:
    """The largest near-duplicate clusters, one row each: members with the cluster's rule."""
    sizes = clusters.groupby("cluster")["key"].size().sort_values(ascending=False, kind="stable")
    rows = [
        clusters[clusters["cluster"] == c].head(SHEET_MEMBERS) for c in sizes.index[:SHEET_CLUSTERS]
    ]
    tiles: list[tuple[np.ndarray | None, str]] = []
    label = dict(zip(images["key"], images["label"], strict=True))
    for row in rows:
        keys = row["key"].tolist()
        pixels = thumbnails(store, images, keys, fetch_root)
        captions = [f"{Path(k).stem}\n{label.get(k, '?')} {row['rules'].iloc[0]}" for k in keys]
        tiles += list(zip(pixels, captions, strict=True))
        tiles += [(None, "")] * (SHEET_MEMBERS - len(keys))
    return contact_sheet(tiles, columns=SHEET_MEMBERS)


def limits(audit: AuditConfig) -> QualityLimits:
    """The config's quality thresholds as the quality module takes them."""
    return QualityLimits(audit.min_side, audit.dark, audit.bright, audit.flat, audit.blur_ratio)


@dataclass(frozen=True)
class Findings:
    """What one audit found: near-duplicate pairs and clusters, unusable images, the scan."""

    duplicates: NearDuplicates
    unusable: pd.DataFrame
    measures: pd.DataFrame
    failed: pd.DataFrame
    excluded: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=EXCLUDED_COLUMNS))


def audit_images(
    store: Store,
    images: pd.DataFrame,
    audit: AuditConfig,
    fetch_root: str | Path,
    embed: Callable[[list[str]], np.ndarray] | None = None,
) -> Findings:
    """Scan the images, then find near-duplicates (by hash, confirmed by `embed` when given:
    keys in, one embedding per key out) and flag unusable images."""
    s = scan(store, images, audit.image_size, fetch_root, audit.workers)
    by_index: Embed | None = None
    if embed is not None:
        by_index = lambda idx: embed([s.keys[int(i)] for i in idx])  # noqa: E731
    dups = find_near_duplicates(
        s.keys,
        s.fingerprints,
        s.codes,
        audit.max_distance,
        embed=by_index,
        min_cosine=audit.min_cosine,
        max_bucket=audit.max_bucket,
    )
    if dups.crowded_buckets:
        log.warning(
            "audit: %d hash buckets held over %d images and were skipped (images that alike"
            " may hide copies): raise audit.max_bucket to search them",
            dups.crowded_buckets,
            audit.max_bucket,
        )
    return Findings(dups, flag(s.measures, limits(audit)), s.measures, s.failed)


@dataclass(frozen=True)
class AuditRef:
    """A saved audit: where its tables are, its content hash, and its counts."""

    uri: str
    hash: str
    listing_fingerprint: str
    images: int
    pairs: int
    clusters: int
    clustered_images: int
    unusable: int
    undecodable: int
    candidates: int
    crowded_buckets: int
    clusters_uri: str = ""
    excluded: int = 0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def table(self, name: str) -> str:
        """The URI of one of its tables: pairs, clusters, unusable, measures, undecodable."""
        return join_uri(self.uri, f"{name}.csv")


def audit_key(listing_fingerprint: str, audit: AuditConfig, *contents: str | None) -> str:
    """The folder name of an audit: same listing, settings and input files (`contents`: their
    hashes), same findings."""
    return digest(listing_fingerprint, config_digest(audit, AUDIT_ENTRIES), contents)[:16]


def save_audit(findings: Findings, root: str, listing_fingerprint: str) -> AuditRef:
    """Write the findings (CSV tables and a JSON reference) under `root` (a folder or s3://)."""
    d = findings.duplicates
    tables = {
        "pairs": d.pairs,
        "clusters": d.clusters,
        "unusable": findings.unusable,
        "measures": findings.measures,
        "undecodable": findings.failed,
        "excluded": findings.excluded,
    }
    for name, table in tables.items():
        write_table(table, join_uri(root, f"{name}.csv"))
    content = frame_hash(d.clusters[["key", "cluster"]].astype("string"))
    ref = AuditRef(
        uri=root,
        hash=digest(
            content,
            frame_hash(findings.unusable.astype("string")),
            frame_hash(findings.excluded.astype("string")),
        )[:16],
        listing_fingerprint=listing_fingerprint,
        images=len(findings.measures) + len(findings.failed),
        pairs=len(d.pairs),
        clusters=int(d.clusters["cluster"].nunique()) if len(d.clusters) else 0,
        clustered_images=len(d.clusters),
        unusable=int(findings.unusable["key"].nunique()) if len(findings.unusable) else 0,
        undecodable=len(findings.failed),
        candidates=d.candidates,
        crowded_buckets=d.crowded_buckets,
        clusters_uri=join_uri(root, "clusters.csv"),
        excluded=len(findings.excluded),
    )
    write_uri(join_uri(root, "audit.json"), json.dumps(ref.to_dict(), indent=2).encode())
    return ref


def load_audit(uri: str) -> AuditRef:
    """The reference of an audit saved at `uri` (its folder)."""
    return AuditRef(**json.loads(read_uri(join_uri(uri, "audit.json"))))


def read_findings_table(ref: AuditRef, name: str) -> pd.DataFrame:
    """One of an audit's tables, keys as strings."""
    return read_table(
        ref.table(name),
        csv_dtype={"key": "string", "key_a": "string", "key_b": "string", "cluster": "string"},
    )


def attach_clusters(images: pd.DataFrame, clusters: pd.DataFrame) -> pd.DataFrame:
    """The listing with each image's near-duplicate cluster (None outside any): the split's group."""
    cluster_of = dict(zip(clusters["key"], clusters["cluster"], strict=True))
    out = images.copy()
    out[CLUSTER] = [cluster_of.get(k) for k in out["key"]]
    return out


LARGEST = 10  # clusters listed in the summary


def summary_markdown(
    ref: AuditRef,
    findings: Findings,
    leaks: pd.DataFrame | None = None,
    suspects: pd.DataFrame | None = None,
) -> str:
    """The audit in Markdown: counts, the largest clusters, unusable images by reason,
    cross-split leaks (given a manifest) and suspect labels per class (given a CV run)."""
    d = findings.duplicates
    lines = [
        f"# Data audit ({ref.images} images, listing `{ref.listing_fingerprint}`)",
        "",
        f"- near-duplicate pairs: {ref.pairs} (of {ref.candidates} candidate pairs from hash"
        f" bands), in {ref.clusters} clusters holding {ref.clustered_images} images",
        f"- unusable images: {ref.unusable}; undecodable: {ref.undecodable}",
        f"- excluded from the split (audit.exclude, audit.exclude_keys): {ref.excluded}",
    ]
    if ref.crowded_buckets:
        lines.append(f"- hash buckets skipped as too full: {ref.crowded_buckets}")
    if len(d.clusters):
        top = (
            d.clusters.groupby("cluster")
            .agg(size=("key", "size"), similarity=("similarity", "min"), rules=("rules", "first"))
            .sort_values(["size", "similarity"], ascending=[False, True])
            .head(LARGEST)
        )
        members = d.clusters.groupby("cluster")["key"].agg(lambda k: ", ".join(sorted(k)[:6]))
        top["members"] = members.reindex(top.index)
        lines += [
            "",
            "## Largest near-duplicate clusters",
            "",
            top.reset_index().to_markdown(index=False),
        ]
    if len(findings.excluded):
        by = findings.excluded.groupby("excluded_by")["key"].agg(
            ["size", lambda k: ", ".join(k[:5])]
        )
        by.columns = ["images", "e.g."]
        lines += ["", "## Excluded", "", by.reset_index().to_markdown(index=False)]
    if len(findings.unusable):
        by = findings.unusable.groupby("reason")["key"].agg(["size", lambda k: ", ".join(k[:5])])
        by.columns = ["images", "e.g."]
        lines += ["", "## Unusable images", "", by.reset_index().to_markdown(index=False)]
    if leaks is not None:
        lines += ["", f"## Cross-split near-duplicates: {len(leaks)} pairs would have leaked", ""]
        if len(leaks):
            counts = leaks.groupby(["split_a", "split_b"]).size().rename("pairs").reset_index()
            lines.append(counts.to_markdown(index=False))
    if suspects is not None:
        lines += ["", f"## Suspect labels: {len(suspects)}", ""]
        if len(suspects):
            per = suspects.groupby("given_label").size().rename("suspects").reset_index()
            lines.append(per.to_markdown(index=False))
    return "\n".join(lines) + "\n"
