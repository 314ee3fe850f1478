"""skin.data.validate: every skipped object and every undecodable image of a data set, with why."""

from __future__ import annotations

import threading
from pathlib import Path

import pandas as pd
import pytest

from skin.base.config import DataConfig
from skin.data.listing import list_dataset
from skin.data.sample_data import write_sample_dataset
from skin.data.storage import open_store
from skin.data.validate import ValidationReport, decode_problems, validate_dataset

COUNTS = {"AK": 3, "MEL": 4, "NV": 5}


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """Twelve good images, then one of each problem a real upload has."""
    root = tmp_path / "data"
    write_sample_dataset(str(root), COUNTS, size=24, seed=4, threads=2)
    good = next((root / "MEL").iterdir()).read_bytes()
    (root / "MEL" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (root / "NV" / "text.jpg").write_bytes(b"this is not a JPEG at all")
    (root / "NV" / "empty.jpg").write_bytes(b"")  # skipped by the listing already
    (root / "NV" / "notes.txt").write_text("not an image")
    (root / "XYZ").mkdir()
    (root / "XYZ" / "a.jpg").write_bytes(good)
    return root


def test_good_images_are_counted_per_class_and_each_problem_has_a_row(data: Path) -> None:
    report = validate_dataset(DataConfig(uri=str(data)))
    assert report.layout == "folders"
    assert report.good.to_dict() == COUNTS, "bad images are not counted as good"
    assert list(report.good.index) == sorted(COUNTS), "classes in order"
    stages = dict(zip(report.problems["key"], report.problems["stage"], strict=True))
    assert stages == {
        "NV/empty.jpg": "listing",
        "NV/notes.txt": "listing",
        "XYZ/a.jpg": "listing",
        "MEL/truncated.jpg": "decode",
        "NV/text.jpg": "decode",
    }, stages
    assert list(report.problems.columns) == ["key", "stage", "reason"]


def test_decode_reasons_are_grouped_by_their_cause(data: Path) -> None:
    report = validate_dataset(DataConfig(uri=str(data)))
    decode = report.problems[report.problems["stage"] == "decode"].set_index("key")["reason"]
    assert decode.to_dict() == {
        "MEL/truncated.jpg": "corrupt or truncated image",
        "NV/text.jpg": "not a usable image",
    }, "the file-specific detail after the colon is dropped"


def test_the_summary_counts_problems_by_stage_and_reason_most_first() -> None:
    problems = pd.DataFrame(
        {
            "key": ["a", "b", "c", "d"],
            "stage": ["listing", "decode", "decode", "decode"],
            "reason": ["not an image file", "x", "y", "x"],
        }
    )
    summary = ValidationReport("folders", pd.Series(dtype=int), problems).summary()
    assert summary.to_dict("records") == [
        {"stage": "decode", "reason": "x", "count": 2},
        {"stage": "decode", "reason": "y", "count": 1},
        {"stage": "listing", "reason": "not an image file", "count": 1},
    ]


def test_a_clean_data_set_has_no_problems_and_an_empty_summary(tmp_path: Path) -> None:
    write_sample_dataset(str(tmp_path), {"BCC": 2, "DF": 3}, size=24, seed=1, threads=2)
    report = validate_dataset(DataConfig(uri=str(tmp_path)))
    assert report.problems.empty and report.good.to_dict() == {"BCC": 2, "DF": 3}
    summary = report.summary()
    assert summary.empty and list(summary.columns) == ["stage", "reason", "count"]


def test_progress_advances_once_per_listed_image(data: Path) -> None:
    ticks: list[int] = []
    lock = threading.Lock()

    def progress(n: int) -> None:
        with lock:
            ticks.append(n)

    validate_dataset(DataConfig(uri=str(data)), progress=progress)
    assert sum(ticks) == sum(COUNTS.values()) + 2, "12 good + 2 undecodable listed images"


def test_an_image_gone_after_listing_is_a_problem_not_a_crash(data: Path) -> None:
    listing = list_dataset(open_store(str(data)), "folders")
    (data / "AK" / listing.images["key"].iloc[0].split("/", 1)[1]).unlink()
    bad = decode_problems(listing, str(data))
    gone = bad[bad["key"] == listing.images["key"].iloc[0]]
    assert len(gone) == 1 and gone["reason"].iloc[0].startswith("object not found"), bad


def test_only_the_configured_classes_count(data: Path) -> None:
    report = validate_dataset(DataConfig(uri=str(data), classes=("AK", "MEL", "NV", "XYZ")))
    assert report.good.to_dict() == {**COUNTS, "XYZ": 1}, "a configured class is listed"
