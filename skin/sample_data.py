"""Write a generated ISIC-shaped dataset to a folder or S3, in either layout (for demos and tests)."""

from __future__ import annotations

import io
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pandas as pd

from skin.labels import CLASSES
from skin.listing import GROUND_TRUTH, METADATA
from skin.storage import open_store
from skin.synthetic import iter_sample_images

INPUT_FOLDER = "ISIC_2019_Training_Input"


def write_sample_dataset(
    dest: str,
    counts: dict[str, int],
    *,
    size: int = 64,
    seed: int = 0,
    layout: str = "folders",
    repeat_fraction: float = 0.2,
    duplicate_fraction: float = 0.0,
    threads: int = 16,
    progress: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """Write images (class folders, or ISIC 2019's folder + CSVs); return what was written."""
    if layout not in ("folders", "isic"):
        raise ValueError(f"layout must be folders or isic, got {layout!r}")
    store = open_store(dest)
    rows: list[dict[str, str]] = []

    def put(item: tuple[str, bytes]) -> None:
        store.put(*item)
        if progress:
            progress(1)

    def items():
        for img in iter_sample_images(
            counts,
            size,
            seed,
            repeat_fraction=repeat_fraction,
            duplicate_fraction=duplicate_fraction,
        ):
            folder = img.label if layout == "folders" else INPUT_FOLDER
            key = f"{folder}/{img.image_id}.jpg"
            rows.append(
                {"key": key, "image": img.image_id, "label": img.label, "lesion_id": img.lesion_id}
            )
            yield key, img.data

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in pool.map(put, items()):
            pass
    written = pd.DataFrame(rows)
    if layout == "isic":
        truth = pd.DataFrame({"image": written["image"]})
        for c in ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"]:
            truth[c] = (written["label"] == c).astype(float)
        truth["UNK"] = 0.0
        store.put(GROUND_TRUTH, truth.to_csv(index=False).encode())
    meta = pd.DataFrame(
        {
            "image": written["image"],
            "age_approx": 50.0,
            "anatom_site_general": "anterior torso",
            "lesion_id": written["lesion_id"],
            "sex": "female",
        }
    )
    buf = io.StringIO()
    meta.to_csv(buf, index=False)
    store.put(METADATA, buf.getvalue().encode())
    return written


def default_counts(per_class: int) -> dict[str, int]:
    return dict.fromkeys(CLASSES, per_class)
