"""The data tasks' cache keys: every input a stage reads is in its key, so nothing stale is reused."""

from __future__ import annotations

from pathlib import Path

import pytest

from skin.data import manifest as mf
from skin.data.listing import METADATA
from skin.data.sample_data import write_sample_dataset
from skin.data.synthetic import class_counts
from tests.recipes import TINY

pytestmark = [pytest.mark.slow, pytest.mark.server]  # Prefect flows on the ephemeral API


def _lesions_straddling(df) -> int:
    known = df[df["lesion_id"].notna()]
    return int((known.groupby("lesion_id")["split"].nunique() > 1).sum())


def test_metadata_change_invalidates_the_split(tmp_path: Path, prefect_api) -> None:
    from flows.stages import split_flow

    data = tmp_path / "data"
    write_sample_dataset(str(data), class_counts(per_class=10), size=24, seed=3, layout="isic",
                         repeat_fraction=0.5)  # fmt: skip
    meta = data / METADATA
    saved = meta.read_bytes()
    meta.unlink()
    ov = {**TINY, "work_dir": str(tmp_path / "work")}
    first = split_flow(data_uri=str(data), overrides=ov)
    assert mf.read(first["manifest"]["uri"])["lesion_id"].isna().all(), "no metadata yet"

    meta.write_bytes(saved)  # the metadata arrives (or is corrected): lesions are now known
    second = split_flow(data_uri=str(data), overrides=ov)
    assert second["stages"]["split"] == "ran", second["stages"]
    assert second["stages"]["undersample"] == "ran", second["stages"]
    df = mf.read(second["manifest"]["uri"])
    assert df["lesion_id"].notna().all(), "the manifest carries the lesion ids"
    assert _lesions_straddling(df) == 0, "no lesion straddles train/dev/test"


def test_edited_previous_manifest_invalidates_the_split(tmp_path: Path, prefect_api) -> None:
    from flows.stages import split_flow

    data = tmp_path / "data"
    write_sample_dataset(str(data), class_counts(per_class=10), size=24, seed=4)
    ov = {**TINY, "work_dir": str(tmp_path / "work")}
    base = split_flow(data_uri=str(data), overrides=ov, previous=None)
    previous = tmp_path / "previous.parquet"
    df = mf.read(base["manifest"]["uri"])
    mf.write(df, str(previous))
    first = split_flow(data_uri=str(data), overrides=ov, previous=str(previous))

    # The same file, edited by hand: one dev image of each class goes to test.
    edited = df.copy()
    alone = ~edited["lesion_id"].duplicated(keep=False) & ~edited["fingerprint"].duplicated(
        keep=False
    )
    moved = edited[(edited["split"] == "dev") & alone].groupby("label").head(1).index
    assert len(moved) >= 4
    edited.loc[moved, "split"] = "test"
    mf.write(edited, str(previous))
    second = split_flow(data_uri=str(data), overrides=ov, previous=str(previous))
    assert second["stages"]["split"] == "ran", second["stages"]
    out = mf.read(second["manifest"]["uri"]).set_index("key")["split"]
    assert (out[edited.loc[moved, "key"]] == "test").all(), "the edited previous split is kept"
    assert first["manifest"]["hash"] != second["manifest"]["hash"]
