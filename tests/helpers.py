"""Plain helpers shared by the tests (no fixtures, no side effects on import)."""

from __future__ import annotations

import atexit
import io
import shutil
import sqlite3
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tests.recipes import TINY


def snapshot(s3_client: Any, bucket: str) -> dict[str, tuple[str, int]]:
    """Every object's ETag and size: compared before and after a run (nothing lost or changed)."""
    out: dict[str, tuple[str, int]] = {}
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = (obj["ETag"], obj["Size"])
    return out


_EMPTY_DB: list[Path] = []  # an empty MLflow database, migrated once per test process


def tracking_db(folder: Path, name: str = "mlflow.db") -> str:
    """`sqlite:///<folder>/<name>` holding a fresh MLflow database: a copy of an empty one migrated
    once per process (migrating costs ~5-10 s here, a copy ~0.1 s). It is what MLflow makes on
    first use, less the default experiment, which MLflow then adds with this folder's artifacts."""
    if not _EMPTY_DB:
        _EMPTY_DB.append(_migrated_empty_db())
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / name).exists():
        shutil.copyfile(_EMPTY_DB[0], folder / name)
    return f"sqlite:///{folder / name}"


def _migrated_empty_db() -> Path:
    from mlflow import MlflowClient

    folder = Path(tempfile.mkdtemp(prefix="skin-tests-mlflow-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    db = folder / "empty.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()  # runs every migration
    with sqlite3.connect(db) as con:  # the default experiment is made on each copy's first use
        con.execute("DELETE FROM experiments WHERE experiment_id = 0")
    return db


def tiny_config(tmp_path: Path, data: Path | str, **extra: object) -> Any:
    """The tiny recipe on `data`, working under `tmp_path`, with dotted overrides."""
    from skin.base.config import load_config

    overrides = {**TINY, "data.uri": str(data), "work_dir": str(tmp_path / "work"), **extra}
    return load_config(None, overrides)


def make_manifest(tmp_path: Path, data: Path, **extra: object) -> tuple[str, Any]:
    """List and split `data` into a manifest under `tmp_path`: its URI and the config used."""
    from skin.data import manifest as mf
    from skin.data.stages import build_manifest, list_images, source_uri

    cfg = tiny_config(tmp_path, data, **extra)
    df = build_manifest(list_images(cfg.data), source_uri(cfg.data.uri), cfg.split)
    uri = str(tmp_path / "manifest.parquet")
    mf.write(df, uri)
    return uri, cfg


def invoke(*args: str) -> tuple[int, str]:
    """Run the `skin` CLI in-process: exit code and stdout (+ stderr unless `--json`)."""
    from typer.testing import CliRunner

    from skin.cli import app

    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    if "--json" in args:
        return result.exit_code, result.stdout
    return result.exit_code, result.output


# --------------------------------------------------------------------------- image caches

SIZE = 36


def cache_manifest(uri: str) -> pd.DataFrame:
    """Every listed image as a train row: the cache needs keys, fingerprints and the source."""
    from skin.data.listing import list_dataset
    from skin.data.stages import source_uri
    from skin.data.storage import open_store

    images = list_dataset(open_store(uri), "folders").images
    return images.assign(split="train", keep=True, source=source_uri(uri))


def with_splits(m: pd.DataFrame) -> pd.DataFrame:
    """Rows dealt round-robin to train, dev and test; every third train row not kept."""
    from skin.data.manifest import SPLITS

    split = np.resize(np.array(SPLITS), len(m))
    keep = (split != "train") | (np.arange(len(m)) % 9 != 0)
    return m.assign(split=split, keep=keep)


def reordered(m: pd.DataFrame, order: str) -> pd.DataFrame:
    """The same manifest in another row order (re-sorted, hand-edited)."""
    rows = m.iloc[::-1] if order == "reversed" else m.sample(frac=1.0, random_state=3)
    return rows.reset_index(drop=True)


def plain_spec(size: int) -> Any:
    """A model input that is the cached image as it is (no centre crop)."""
    from skin.train.model import InputSpec

    return InputSpec(size, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "bicubic", 1.0)


def split_keys(m: pd.DataFrame, split: str) -> pd.DataFrame:
    """The manifest rows `prepare` serves for `split`, in manifest order."""
    chosen = m["split"] == split
    if split == "train":
        chosen &= m["keep"].astype(bool)
    return m[chosen]


def assert_each_key_reads_its_own_image(p, m: pd.DataFrame, data: Path) -> None:
    """Every served row is its manifest row's own image under its own label."""
    from skin.data.images import decode
    from skin.data.manifest import SPLITS

    index = {c: i for i, c in enumerate(p.classes)}
    for split in SPLITS:
        want = split_keys(m, split)
        assert len(p.rows[split]) == len(want), split
        assert list(p.labels[split]) == [index[c] for c in want["label"]], f"{split} labels"
        for row, key in zip(p.rows[split], want["key"], strict=True):
            own = decode((data / key).read_bytes(), p.cache.size)
            assert np.array_equal(p.cache.images[row], own), f"{split}: {key} reads another image"


def write_data(uri: str, per_class: int = 3) -> None:
    """Three generated 48 px images per class, written by few threads (few S3 clients)."""
    from skin.data.sample_data import write_sample_dataset

    counts = dict.fromkeys(["AK", "BCC", "BKL", "DF", "MEL", "NV", "SCC", "VASC"], per_class)
    write_sample_dataset(uri, counts, size=48, seed=5, threads=2)  # few S3 clients to start


def assign_splits(df: pd.DataFrame, **kwargs: Any) -> pd.Series:
    """Only the split name of each row (what most split tests look at)."""
    from skin.data.split import split_with_moves

    return split_with_moves(df, **kwargs).split


SEXES = ["male", "female"]


def with_metadata(uri: str) -> pd.DataFrame:
    """The manifest with patient metadata (sex, age, site) and lesions of two images each."""
    from skin.data import manifest as mf

    m = mf.read(uri)
    n = np.arange(len(m))
    lesion = m.groupby(["split", "label"]).cumcount() // 2
    m = m.assign(
        lesion_id=m["split"] + "-" + m["label"] + "-" + lesion.astype(str),
        sex=np.resize(SEXES, len(m)),
        age_approx=(n % 4 * 20 + 5).astype(float),
        anatom_site_general=np.where(n % 5 == 0, None, "torso"),
    )
    mf.write(m, uri)
    return m


def tinted_copy(src: Path, dst: Path, red: float = 1.35) -> Path:
    """The same images with a warm colour cast (red up, blue down): a new camera or light."""
    from PIL import Image

    shutil.copytree(src, dst)
    for path in dst.rglob("*.jpg"):
        rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
        rgb[..., 0] *= red
        rgb[..., 2] *= 0.85
        buf = io.BytesIO()
        Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
        path.write_bytes(buf.getvalue())
    return dst


# --------------------------------------------------------------------------- planted copies

COPY_KINDS = ("jpeg60", "resize", "crop", "corner_crop", "rot90", "flip", "bright")


def make_copy(data: bytes, kind: str) -> bytes:
    """A near-duplicate of a JPEG as public data sets hold them: re-encoded at quality 60,
    resized to 0.75, cropped by 5 % (centred, or towards the top-left corner), turned by 90°,
    mirrored, or 10 % brighter."""
    import io

    from PIL import Image, ImageEnhance

    from skin.data.synthetic import encode_jpeg

    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    if kind == "jpeg60":
        return encode_jpeg(img, quality=60)
    if kind == "resize":
        img = img.resize((round(w * 0.75), round(h * 0.75)), Image.Resampling.BICUBIC)
    elif kind == "crop":
        dx, dy = round(w * 0.025), round(h * 0.025)
        img = img.crop((dx, dy, w - dx, h - dy))
    elif kind == "corner_crop":
        img = img.crop((0, 0, round(w * 0.95), round(h * 0.95)))
    elif kind == "rot90":
        img = img.transpose(Image.Transpose.ROTATE_90)
    elif kind == "flip":
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    elif kind == "bright":
        img = ImageEnhance.Brightness(img).enhance(1.1)
    else:
        raise ValueError(f"unknown copy kind {kind!r}; known: {COPY_KINDS}")
    return encode_jpeg(img)


def planted_images(
    per_class: int, copies_per_kind: int, size: int = 96, seed: int = 3
) -> tuple[list[Any], dict[str, tuple[str, str]]]:
    """Distinct generated lesions plus copies of some of them, each copy a new image id and a
    new lesion id: (images, {copy image_id: (original image_id, kind)})."""
    from dataclasses import replace

    from skin.base.labels import CLASSES
    from skin.data.synthetic import iter_sample_images

    counts = dict.fromkeys(CLASSES, per_class)
    originals = list(iter_sample_images(counts, size, seed, repeat_fraction=0.0))
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(originals), size=copies_per_kind * len(COPY_KINDS), replace=False)
    out, truth = list(originals), {}
    for n, i in enumerate(picks):
        kind, src = COPY_KINDS[n // copies_per_kind], originals[int(i)]
        image_id = f"COPY_{n:05d}"
        copy = replace(src, image_id=image_id, lesion_id=f"COPYLESION_{n:05d}")
        out.append(replace(copy, data=make_copy(src.data, kind)))
        truth[image_id] = (src.image_id, kind)
    return out, truth


def png_bomb(side: int = 30_000) -> bytes:
    """A few hundred bytes whose header claims side × side pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (side + 1) * 4, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
