"""Slices by patient metadata: bands, MLflow-safe names, the size floor and each slice's numbers."""

from __future__ import annotations

import posixpath
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score

from skin.stats.metrics import expected_calibration_error
from skin.stats.slices import age_bands, sanitise, slice_metrics, slice_table, slice_values

CLASSES = ("BCC", "MEL", "NV")
SAFE = re.compile(r"^[A-Za-z0-9_\-. /]+$")


def frame(rng: np.random.Generator) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """80 images: 40 head/neck, 35 lower extremity, 5 without a site; ages and sexes mixed."""
    sites = ["head/neck"] * 40 + ["lower extremity"] * 35 + [None] * 5
    meta = pd.DataFrame(
        {
            "anatom_site_general": sites,
            "sex": rng.choice(["male", "female"], 80),
            "age_approx": rng.choice([5.0, 35.0, 45.0, 70.0, np.nan], 80),
        }
    )
    y = rng.integers(0, 3, 80)
    probs = rng.dirichlet(np.ones(3), 80)
    probs[np.arange(80), y] += rng.random(80)  # better than chance
    return meta, y, probs / probs.sum(1, keepdims=True)


def is_safe(name: str) -> bool:
    return bool(SAFE.match(name)) and "//" not in name and posixpath.normpath(name) == name


def test_values_become_one_safe_name_segment() -> None:
    assert sanitise("head/neck") == "head-neck"
    assert sanitise("oral/genital") == "oral-genital"
    assert sanitise("palms/soles") == "palms-soles"
    assert sanitise("lower extremity") == "lower-extremity"
    assert sanitise("s3://bucket//isic") == "s3-bucket-isic"
    for nasty in ("", ".", "..", "/", "a//b", "../x", " x ", "a=b", "é", 3.0, "-a-"):
        value = sanitise(nasty)
        assert "/" not in value and value, repr(nasty)
        assert is_safe(f"test_slice/site/{value}/balanced_accuracy"), f"{nasty!r} -> {value!r}"


def test_ages_fall_in_twenty_year_bands() -> None:
    ages = pd.Series([0, 19, 20, 39.0, "45", 85, None, np.nan, ""], name="age_approx")
    assert age_bands(ages).tolist() == [
        "0-19", "0-19", "20-39", "20-39", "40-59", "80-99", "missing", "missing", "missing"
    ]  # fmt: skip
    with pytest.raises(ValueError, match=r"age_approx.*old"):
        age_bands(pd.Series(["old"], name="age_approx"))
    with pytest.raises(ValueError, match="age_approx"):
        age_bands(pd.Series([-5], name="age_approx"))


def test_only_dimensions_with_metadata_are_sliced() -> None:
    meta = pd.DataFrame({"sex": ["male", None], "age_approx": [np.nan, np.nan], "other": [1, 2]})
    values = slice_values(meta)
    assert list(values.columns) == ["sex"], "no age known, no site column: only sex"
    assert values["sex"].tolist() == ["male", "missing"]


def test_each_slice_scores_its_own_images() -> None:
    meta, y, probs = frame(np.random.default_rng(0))
    table = slice_table(meta, y, probs, CLASSES, n_resamples=200, min_size=30).set_index(
        ["dimension", "value"]
    )
    assert list(table.loc["site"].index) == ["head-neck", "lower-extremity", "missing"]
    assert list(table.loc["age"].index) == ["0-19", "20-39", "40-59", "60-79", "missing"]
    for (dim, value), row in table.iterrows():
        members = slice_values(meta)[dim].to_numpy() == value
        assert row["n"] == members.sum(), (dim, value)
        assert row["n_mel"] == (y[members] == 1).sum(), (dim, value)
        assert row["scored"] == (members.sum() >= 30), (dim, value)
        if not row["scored"]:
            assert row[["balanced_accuracy", "ece"]].isna().all(), "small slices are not scored"
            continue
        ys, ps = y[members], probs[members]
        assert row["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(ys, ps.argmax(1)))
        assert row["mel_sensitivity"] == pytest.approx((ps.argmax(1)[ys == 1] == 1).mean())
        assert row["ece"] == pytest.approx(expected_calibration_error(ys, ps))
        for metric in ("balanced_accuracy", "mel_sensitivity", "ece"):
            low, high = row[f"{metric}_ci_low"], row[f"{metric}_ci_high"]
            assert low <= row[metric] <= high and low < high, (dim, value, metric)
    assert table.loc[("site", "missing"), "n"] == 5 and not table.loc[("site", "missing"), "scored"]


def test_flat_metrics_are_mlflow_safe_and_skip_unscored_slices() -> None:
    meta, y, probs = frame(np.random.default_rng(1))
    metrics = slice_metrics(slice_table(meta, y, probs, CLASSES, n_resamples=50), "test")
    assert "test_slice/site/head-neck/balanced_accuracy" in metrics
    assert "test_slice/site/head-neck/ece_ci_high" in metrics
    assert metrics["test_slice/site/missing/n"] == 5
    assert not any(
        k.startswith("test_slice/site/missing/") and not k.endswith("/n") for k in metrics
    )
    bad = [k for k in metrics if not is_safe(k)]
    assert not bad, bad


def test_lesions_stay_whole_and_no_bootstrap_means_no_intervals() -> None:
    meta, y, probs = frame(np.random.default_rng(2))
    off = slice_table(meta, y, probs, CLASSES, n_resamples=0)
    assert off.loc[off["scored"], "balanced_accuracy"].notna().all()
    assert off["balanced_accuracy_ci_low"].isna().all()
    assert not any("_ci_" in k for k in slice_metrics(off))
    lesion = np.array([f"L{label}-{i // 4}" for i, label in enumerate(y)])  # one label each
    grouped = slice_table(meta, y, probs, CLASSES, groups=lesion, n_resamples=100)
    assert grouped["n"].equals(off["n"]) and grouped["balanced_accuracy"].equals(
        off["balanced_accuracy"]
    ), "groups change the intervals, never the counts or the point values"
    with pytest.raises(ValueError, match="one lesion, one label"):
        slice_table(meta, y, probs, CLASSES, groups=np.arange(80) // 2)


def test_melanoma_sensitivity_at_a_threshold_and_without_melanoma() -> None:
    meta, y, probs = frame(np.random.default_rng(3))
    at = slice_table(meta, y, probs, CLASSES, n_resamples=0, mel_threshold=0.0).set_index("value")
    assert (at.loc[at["scored"], "mel_sensitivity"] == 1).all(), "threshold 0 calls every image"
    none = slice_table(meta, y, probs, ("a", "b", "c"), n_resamples=0)
    assert none["mel_sensitivity"].isna().all() and (none["n_mel"] == 0).all()
    with pytest.raises(ValueError, match="metadata"):
        slice_table(meta.iloc[:10], y, probs, CLASSES)
