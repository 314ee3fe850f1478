"""audit: near-duplicates among ISIC-sized generated data (25,331 images at full size) by hash
bands, against comparing every pair; time, peak memory, and recall/precision on planted copies."""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.common import Context, result, timed
from benchmarks.data import DATA_ROOT
from skin.base.config import AuditConfig
from skin.data.audit import audit_images, scan
from skin.data.duplicates import VARIANTS, find_near_duplicates, hamming
from skin.data.storage import open_store
from tests.helpers import COPY_KINDS, planted_images

NAME = "audit"
SIDE = 128  # generated side: decoding real 600x450-1024x1024 JPEGs costs more (see `decode`)


def planted(n: int) -> tuple[Path, pd.DataFrame]:
    """A class-folder dataset of ~n images, 1 % of them copies of each kind (7 % in all), with
    the truth (copy image id, original image id, kind); written once under SKIN_BENCH_DATA."""
    folder = DATA_ROOT / f"audit-v2-{n}"
    truth_csv = folder / "truth.csv"
    if truth_csv.exists():
        return folder, pd.read_csv(truth_csv)
    per_kind = max(1, n // 100)
    per_class = (n - per_kind * len(COPY_KINDS)) // 8
    images, truth = planted_images(per_class, per_kind, size=SIDE, seed=1)
    for s in images:
        (folder / s.label).mkdir(parents=True, exist_ok=True)
        (folder / s.label / f"{s.image_id}.jpg").write_bytes(s.data)
    table = pd.DataFrame(
        [(c, o, k) for c, (o, k) in truth.items()], columns=["copy", "original", "kind"]
    )
    table.to_csv(truth_csv, index=False)
    return folder, table


def listing(folder: Path) -> pd.DataFrame:
    keys = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.jpg"))
    return pd.DataFrame(
        {"key": keys, "fingerprint": keys, "label": [k.split("/")[0] for k in keys]}
    )


def _child(folder: str, queue: Any) -> None:
    """The audit alone in a fresh process, so its peak RSS is its own."""
    images = listing(Path(folder))
    t0 = time.perf_counter()
    found = audit_images(open_store(folder), images, AuditConfig(), Path(folder) / ".cache")
    d = found.duplicates
    queue.put(
        {
            "seconds": time.perf_counter() - t0,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "pairs": d.pairs[["key_a", "key_b"]].values.tolist(),
            "candidates": d.candidates,
            "crowded_buckets": d.crowded_buckets,
            "unusable": len(found.unusable),
        }
    )


def all_pairs_s(codes: np.ndarray, rows: int) -> float:
    """Comparing each image with every other (every variant), timed on `rows` rows and scaled."""
    n = len(codes)
    t0 = time.perf_counter()
    for i in range(rows):
        hamming(codes[i, :1], codes[i + 1 :]).min(axis=1)
    per_row = (time.perf_counter() - t0) / rows
    return per_row * n / 2  # the average row compares with n/2 others


def recall_precision(pairs: list[list[str]], truth: pd.DataFrame) -> dict[str, Any]:
    stem = lambda k: Path(k).stem  # noqa: E731
    found = {frozenset((stem(a), stem(b))) for a, b in pairs}
    origin = dict(zip(truth["copy"], truth["original"], strict=True))
    right = [origin.get(stem(a), stem(a)) == origin.get(stem(b), stem(b)) for a, b in pairs]
    recall = {
        kind: round(
            float(
                np.mean(
                    [
                        frozenset((c, o)) in found
                        for c, o in zip(g["copy"], g["original"], strict=True)
                    ]
                )
            ),
            4,
        )
        for kind, g in truth.groupby("kind")
    }
    return {"recall": recall, "precision": round(float(np.mean(right)), 4) if right else 1.0}


def run(ctx: Context) -> dict[str, Any]:
    n = int(os.environ.get("SKIN_BENCH_AUDIT_IMAGES", ctx.pick(2000, 25331)))  # e.g. 5000
    folder, truth = planted(n)
    images = listing(folder)
    ctxmp = mp.get_context("spawn")
    queue = ctxmp.Queue()
    child = ctxmp.Process(target=_child, args=(str(folder), queue))
    child.start()
    ours = queue.get()
    child.join()
    scan_s, s = timed(lambda: scan(open_store(str(folder)), images, SIDE, folder / ".cache", 2))
    find_s, _ = timed(lambda: find_near_duplicates(s.keys, s.fingerprints, s.codes, 16))
    rows = ctx.pick(200, 200)
    baseline_find_s = all_pairs_s(s.codes, rows)
    return result(
        NAME,
        ctx,
        baseline_find_s,
        find_s,
        1.0,
        images=len(images),
        audit_s=round(ours["seconds"], 2),
        planted_copies=len(truth),
        scan_s=round(scan_s, 2),
        find_s=round(find_s, 3),
        all_pairs_find_s=round(baseline_find_s, 1),
        all_pairs=n * (n - 1) // 2,
        candidates=ours["candidates"],
        crowded_buckets=ours["crowded_buckets"],
        reported_pairs=len(ours["pairs"]),
        unusable=ours["unusable"],
        audit_peak_rss_mb=round(ours["peak_rss_mb"], 1),
        **recall_precision(ours["pairs"], truth),
        baseline_note=f"after the same scan, every pair compared (all {VARIANTS} variants); {rows} rows timed, scaled to n(n-1)/2 pairs",
        ours_note="find_near_duplicates on the same codes: hash-band candidates, distances, clusters; audit_s and audit_peak_rss_mb: skin.data.audit.audit_images in a fresh process (fetch, decode, hash, measure on 2 threads, find, quality flags)",
    )
