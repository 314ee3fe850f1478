"""Write a generated ISIC-shaped dataset to a folder or S3, in either layout (for demos and tests)."""

from __future__ import annotations

import io
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from skin.base.labels import CLASSES
from skin.data.listing import GROUND_TRUTH, METADATA
from skin.data.storage import open_store
from skin.data.synthetic import iter_sample_images

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
        for c in CLASSES:
            truth[c] = (written["label"] == c).astype(float)
        truth["UNK"] = 0.0
        store.put(GROUND_TRUTH, truth.to_csv(index=False).encode())
    meta = sample_metadata(written, seed)
    buf = io.StringIO()
    meta.to_csv(buf, index=False)
    store.put(METADATA, buf.getvalue().encode())
    return written


# ISIC 2019's anatomic sites (with their slashes) and a rough share of each.
SITES = {
    "anterior torso": 0.25,
    "lower extremity": 0.2,
    "posterior torso": 0.2,
    "upper extremity": 0.15,
    "head/neck": 0.12,
    "lateral torso": 0.03,
    "palms/soles": 0.03,
    "oral/genital": 0.02,
}
MISSING = 0.05  # share of lesions with a field left blank, as in ISIC's metadata


def sample_metadata(written: pd.DataFrame, seed: int) -> pd.DataFrame:
    """ISIC-like metadata per lesion (age in steps of 5, site, sex; some blank), one row per image."""
    rng = np.random.default_rng(seed + 7919)
    lesions = written["lesion_id"].drop_duplicates().to_numpy()
    n = len(lesions)
    per_lesion = pd.DataFrame(
        {
            "age_approx": (rng.integers(1, 18, size=n) * 5).astype(float),
            "anatom_site_general": rng.choice(list(SITES), size=n, p=list(SITES.values())),
            "sex": rng.choice(["male", "female"], size=n),
        },
        index=lesions,
    ).astype({"anatom_site_general": object, "sex": object})
    for column in per_lesion.columns:
        per_lesion.loc[rng.random(n) < MISSING, column] = None
    meta = per_lesion.reindex(written["lesion_id"]).reset_index(drop=True)
    meta.insert(0, "image", written["image"].to_numpy())
    meta["lesion_id"] = written["lesion_id"].to_numpy()
    return meta[["image", "age_approx", "anatom_site_general", "lesion_id", "sex"]]
