"""Exclusions: nothing unless asked; asked, each finding by kind or a reviewed list, with why."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from skin.data.exclusions import ExclusionError, duplicate_extras, excluded, reviewed_keys

IMAGES = pd.DataFrame({"key": ["a", "b", "c", "d", "e"], "size": [10, 30, 30, 5, 8]})
CLUSTERS = pd.DataFrame({"key": ["a", "b", "c"], "cluster": ["a", "a", "a"]})
UNUSABLE = pd.DataFrame({"key": ["d", "d"], "reason": ["tiny", "almost black"]})
SUSPECTS = pd.DataFrame({"key": ["e", "zzz"]})


def test_nothing_is_excluded_unless_asked() -> None:
    assert excluded(IMAGES, (), CLUSTERS, UNUSABLE, SUSPECTS, None).empty


def test_a_cluster_keeps_its_largest_file_and_ties_go_to_the_smallest_key() -> None:
    assert duplicate_extras(IMAGES, CLUSTERS) == ["c", "a"]


def test_each_kind_and_the_reviewed_list_say_why_and_unknown_keys_are_ignored() -> None:
    kinds = ("near_duplicates", "unusable", "label_issues")
    out = excluded(IMAGES, kinds, CLUSTERS, UNUSABLE, SUSPECTS, ["a", "nope"])
    why = dict(zip(out["key"], out["excluded_by"], strict=True))
    assert why == {
        "a": "near_duplicates; reviewed list",
        "c": "near_duplicates",
        "d": "unusable: tiny; unusable: almost black",
        "e": "label_issues",
    }


def test_label_issues_without_a_cv_audit_are_a_clear_error() -> None:
    with pytest.raises(ExclusionError, match="skin audit --data URI --cv-run"):
        excluded(IMAGES, ("label_issues",), CLUSTERS, UNUSABLE, None, None)


def test_reviewed_lists_as_csv_or_text(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("key,note\nNV/x.jpg,blurry\nMEL/y.jpg,\n")
    (tmp_path / "b.txt").write_text("NV/x.jpg\n\nMEL/y.jpg\n")
    assert reviewed_keys(str(tmp_path / "a.csv")) == ["NV/x.jpg", "MEL/y.jpg"]
    assert reviewed_keys(str(tmp_path / "b.txt")) == ["NV/x.jpg", "MEL/y.jpg"]
    (tmp_path / "c.csv").write_text("image,note\nx,1\n")
    with pytest.raises(ExclusionError, match="no `key` column"):
        reviewed_keys(str(tmp_path / "c.csv"))
    with pytest.raises(ExclusionError, match="cannot read"):
        reviewed_keys(str(tmp_path / "missing.csv"))
