"""Generated datasets (skin/data/sample_data.py): ISIC's layout with plausible patient metadata."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from skin.data.listing import METADATA, list_dataset
from skin.data.sample_data import SITES, write_sample_dataset
from skin.data.storage import open_store
from skin.data.synthetic import class_counts


def test_isic_layout_carries_plausible_metadata_per_lesion(tmp_path: Path) -> None:
    write_sample_dataset(str(tmp_path), class_counts(per_class=25), size=16, seed=2,
                         layout="isic", repeat_fraction=0.4)  # fmt: skip
    meta = pd.read_csv(tmp_path / METADATA)
    assert set(meta["anatom_site_general"].dropna()) <= set(SITES), "ISIC's own site names"
    assert meta["anatom_site_general"].nunique() >= 4, "several sites to slice by"
    assert set(meta["sex"].dropna()) == {"male", "female"}
    ages = meta["age_approx"].dropna()
    assert ((ages % 5 == 0) & (ages > 0) & (ages < 90)).all(), "ages in ISIC's steps of 5"
    assert meta[["age_approx", "anatom_site_general", "sex"]].isna().any().any(), "some blanks"
    per_lesion = meta.groupby("lesion_id")[["age_approx", "anatom_site_general", "sex"]]
    assert (per_lesion.nunique(dropna=False) == 1).all().all(), "one patient per lesion"
    listed = list_dataset(open_store(str(tmp_path))).images
    assert listed["anatom_site_general"].notna().sum() > 0.8 * len(listed), "metadata joined"
