"""Generated ISIC-sized datasets for the benchmarks: class folders, written once and reused."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from skin.base.config import SplitConfig
from skin.base.labels import CLASSES
from skin.data.listing import METADATA, list_dataset
from skin.data.stages import build_manifest, source_uri
from skin.data.storage import open_store
from skin.data.synthetic import iter_sample_images

DATA_ROOT = Path(os.environ.get("SKIN_BENCH_DATA", Path(tempfile.gettempdir()) / "skin-bench-data"))
RENDER = 128  # lesions are drawn at this side, then enlarged: drawing at 1024 px costs ~1 s each
_PAD = 32


def balanced(n: int) -> dict[str, int]:
    """n images over the 8 classes, as evenly as possible (a stable accuracy to compare)."""
    base, extra = divmod(n, len(CLASSES))
    return {c: base + (i < extra) for i, c in enumerate(CLASSES)}


def isic_like(n: int, width: int, height: int, seed: int = 0) -> Path:
    """A folder of n labelled JPEGs of width × height (quality 90, sensor-like noise), reused.

    ISIC's BCN photos are 1024 × 1024 and HAM's 600 × 450; noise keeps the JPEGs at ISIC-like
    sizes (~135 kB at 1024 × 768), so decoding costs what it costs on the real files."""
    folder = DATA_ROOT / f"isic-{n}-{width}x{height}-s{seed}"
    if (folder / ".complete").exists():
        return folder
    tmp = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}")
    noise = np.random.default_rng(seed).normal(0, 4, (height + _PAD, width + _PAD, 3))
    noise = noise.astype(np.int16)
    lesions: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=len(os.sched_getaffinity(0))) as pool:
        jobs = []
        for s in iter_sample_images(balanced(n), RENDER, seed):
            lesions[s.image_id] = s.lesion_id
            path = tmp / s.label / f"{s.image_id}.jpg"
            jobs.append(pool.submit(_write_one, path, s.data, (width, height), noise))
        for job in jobs:
            job.result()
    meta = pd.DataFrame({"image": list(lesions), "lesion_id": list(lesions.values())})
    meta.to_csv(tmp / METADATA, index=False)  # repeat photos of a lesion stay in one split
    (tmp / ".complete").touch()
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def _write_one(path: Path, small: bytes, size: tuple[int, int], noise: np.ndarray) -> None:
    img = Image.open(io.BytesIO(small)).convert("RGB").resize(size, Image.Resampling.BICUBIC)
    dy, dx = (int(b) % _PAD for b in hashlib.md5(path.name.encode()).digest()[:2])
    w, h = size
    pixels = np.asarray(img, dtype=np.int16) + noise[dy : dy + h, dx : dx + w]
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())


def manifest(uri: str, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)) -> pd.DataFrame:
    """The pipeline's own manifest of a dataset (listing + lesion-grouped split, no balancing)."""
    listing = list_dataset(open_store(uri), "folders")
    split = SplitConfig(fractions=fractions, balance="none")
    return build_manifest(listing, source_uri(uri), split)


def upload(folder: Path, uri: str, threads: int = 16) -> int:
    """Copy a local dataset folder to a store (an S3 prefix); returns the object count."""
    store = open_store(uri)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != ".complete")
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(lambda p: store.put(p.relative_to(folder).as_posix(), p.read_bytes()), files))
    return len(files)
