"""One flow per stage, each taking its inputs by reference: listing counts what the data holds,
and a split's manifest becomes the dataset's latest, reused until the data or a setting moves."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.common import resolve_manifest
from flows.stages import list_flow, split_flow
from skin.data import manifest as mf
from skin.data.sample_data import write_sample_dataset
from tests.helpers import tiny_config
from tests.recipes import TINY

pytestmark = pytest.mark.server  # Prefect flows on the session's ephemeral API


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """Six 24 px images of each of the eight classes."""
    root = tmp_path / "data"
    counts = dict.fromkeys(["AK", "BCC", "BKL", "DF", "MEL", "NV", "SCC", "VASC"], 6)
    write_sample_dataset(str(root), counts, size=24, seed=2)
    return root


def test_list_flow_counts_each_class_and_fingerprints_the_data(
    tmp_path: Path, data: Path, prefect_api
) -> None:
    ov = {**TINY, "work_dir": str(tmp_path / "work")}
    listed = list_flow(data_uri=str(data), overrides=ov)
    assert listed["images"] == 48 and set(listed["counts"].values()) == {6}, listed
    again = list_flow(data_uri=str(data), overrides=ov)
    assert again["fingerprint"] == listed["fingerprint"], "the same data: the same fingerprint"
    (data / "NV" / next(iter(sorted(p.name for p in (data / "NV").iterdir())))).unlink()
    fewer = list_flow(data_uri=str(data), overrides=ov)
    assert fewer["counts"]["NV"] == 5 and fewer["fingerprint"] != listed["fingerprint"], fewer


def test_split_flow_makes_the_latest_manifest_and_reuses_it(
    tmp_path: Path, data: Path, prefect_api
) -> None:
    ov = {**TINY, "work_dir": str(tmp_path / "work")}
    first = split_flow(data_uri=str(data), overrides=ov)
    assert first["stages"] == {
        "list-images": "ran", "audit": "ran", "split": "ran", "undersample": "ran"
    }  # fmt: skip
    manifest = mf.read(first["manifest"]["uri"])
    assert len(manifest) == 48 and set(manifest["split"]) == {"train", "dev", "test"}
    latest = resolve_manifest("latest", tiny_config(tmp_path, data, **ov))
    assert latest.uri == first["manifest"]["uri"], "the split's manifest is the dataset's latest"
    again = split_flow(data_uri=str(data), overrides=ov)
    assert again["stages"]["split"] == again["stages"]["undersample"] == "cached", again
    assert again["manifest"]["hash"] == first["manifest"]["hash"]
    fresh = split_flow(data_uri=str(data), overrides=ov, previous=None, refresh=True)
    assert fresh["stages"]["split"] == "ran", "refresh: the stage runs again"
