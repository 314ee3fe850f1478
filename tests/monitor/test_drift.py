"""Drift checks: the tests hold their false-alarm rate under no drift and find a colour cast."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from benchmarks.decision_rates.drift import reports, simulate
from skin.base.config import DriftConfig
from skin.data.listing import list_dataset
from skin.data.stages import source_uri
from skin.data.storage import open_store
from skin.monitor.drift import (
    PROPERTIES,
    DriftParams,
    DriftReport,
    Side,
    chart_png,
    check_drift,
    class_mix_by_lesion,
    class_mix_test,
    combine,
    current_rows,
    holm,
    judge,
    mmd_test,
    new_fraction,
    property_tests,
    reference_rows,
)
from tests.helpers import tinted_copy

CLASSES = list("ABCDEFGH")
MIX = np.array([40, 15, 12, 10, 4, 3, 1, 1], dtype=float) / 86


def _props(rng: np.random.Generator, n: int, red_shift: float = 0.0) -> pd.DataFrame:
    frame = pd.DataFrame({name: rng.normal(size=n) for name in PROPERTIES})
    frame["red"] += red_shift
    return frame


def test_holm_adjusts_like_the_textbook() -> None:
    got = holm([0.01, 0.04, 0.03, 0.005])
    # sorted 0.005·4=0.02, 0.01·3=0.03, 0.03·2=0.06, 0.04·1=0.04 → running max 0.02 0.03 0.06 0.06
    assert np.allclose(got, [0.03, 0.06, 0.06, 0.02]), got


def test_mmd_p_values_are_uniform_without_drift_and_small_with_it() -> None:
    rng = np.random.default_rng(0)
    null = np.array(
        [
            mmd_test(rng.normal(size=(30, 8)), rng.normal(size=(30, 8)), 99, seed=i).p_value
            for i in range(120)
        ]
    )
    assert 0.4 < null.mean() < 0.6, f"p-values under no drift should average ~0.5: {null.mean()}"
    assert (null < 0.1).mean() < 0.2, f"false alarms at 0.1: {(null < 0.1).mean()}"
    shifted = [
        mmd_test(rng.normal(size=(30, 8)), rng.normal(size=(30, 8)) + 0.6, 99, seed=i).p_value
        for i in range(20)
    ]
    assert np.mean(np.array(shifted) < 0.05) > 0.9, shifted


def test_the_family_false_alarm_rate_stays_near_alpha_over_all_checks() -> None:
    rng = np.random.default_rng(1)
    alarms = []
    for _ in range(300):
        checks = property_tests(_props(rng, 80), _props(rng, 80))
        ref, cur = rng.choice(CLASSES, 300, p=MIX), rng.choice(CLASSES, 100, p=MIX)
        checks.append(class_mix_test(ref, cur))
        alarms.append(any(c.drifted for c in combine(checks, 0.05)))
    rate = float(np.mean(alarms))
    assert rate <= 0.09, f"Holm keeps the family-wise rate ≤ alpha 0.05 (noise allowed): {rate}"


def test_a_colour_shift_and_a_new_class_mix_are_detected() -> None:
    rng = np.random.default_rng(2)
    found = [
        c.check
        for c in combine(property_tests(_props(rng, 150), _props(rng, 150, 1.0)), 0.01)
        if c.drifted
    ]
    assert found == ["property:red"], found
    flipped = MIX[::-1]
    mix = class_mix_test(rng.choice(CLASSES, 300, p=MIX), rng.choice(CLASSES, 100, p=flipped))
    assert mix.p_value < 1e-6, mix


def test_new_images_are_those_the_reference_lacks_by_key_or_content() -> None:
    ref = pd.DataFrame({"key": ["a", "b", "c"], "fingerprint": ["1", "2", "3"]})
    cur = pd.DataFrame({"key": ["a", "b", "c", "d"], "fingerprint": ["1", "9", "3", "4"]})
    assert list(current_rows(cur, ref, "new")["key"]) == ["b", "d"], "changed b, added d"
    assert len(current_rows(cur, ref, "all")) == 4
    assert new_fraction(cur, ref) == pytest.approx(0.5)


def test_test_rows_of_the_reference_are_not_new(tmp_path: Path) -> None:
    manifest = pd.DataFrame(
        {
            "key": list("abc"),
            "fingerprint": list("123"),
            "label": ["A"] * 3,
            "source": ["x"] * 3,
            "split": ["train", "dev", "test"],
        }
    )
    report = check_drift(manifest, manifest, DriftParams(min_images=2), tmp_path)
    assert report.n_current == 0 and report.n_reference == 2, report


def test_too_few_new_images_are_not_tested(tmp_path: Path) -> None:
    ref = pd.DataFrame(
        {"key": ["a"], "fingerprint": ["1"], "label": ["A"], "source": ["x"], "split": ["train"]}
    )
    report = check_drift(ref, ref, DriftParams(), tmp_path)
    assert not report.drifted and not report.checks, report
    assert "fewer than drift.min_images" in report.verdict(), report.verdict()


# --------------------------------------------------------------------------- real images


def _rows(root: Path) -> pd.DataFrame:
    images = list_dataset(open_store(str(root)), "folders").images
    return images.assign(source=source_uri(str(root)))


@pytest.fixture(scope="module")
def tiny_model():
    from skin.train.loop import seed_everything
    from skin.train.model import build_model, input_spec

    seed_everything(0)
    model = build_model("test_resnet", 8, pretrained=False)
    return model.eval(), input_spec(model, 32)


def test_a_colour_cast_is_flagged_and_an_independent_sample_is_not(
    tmp_path: Path, sample_data: Path, tiny_model
) -> None:
    from skin.data.sample_data import write_sample_dataset
    from skin.data.synthetic import class_counts

    reference = _rows(sample_data).assign(split="train", keep=True)
    params = DriftParams(current="all", sample=120)
    model, spec = tiny_model
    cast = _rows(tinted_copy(sample_data, tmp_path / "cast"))
    report = check_drift(reference, cast, params, tmp_path / "cache", model=model, spec=spec)
    flagged = {c.check for c in report.checks if c.drifted}
    assert report.drifted, report.table()
    assert {"property:red", "embedding_mmd"} <= flagged, report.table()
    assert "class_mix" not in flagged, "same labels: the class mix has not moved"

    fresh = tmp_path / "fresh"  # new images from the same generator: no drift
    write_sample_dataset(str(fresh), class_counts(per_class=15), size=40, seed=7)
    same = check_drift(reference, _rows(fresh), params, tmp_path / "cache", model=model, spec=spec)
    assert len(same.checks) == 1 + len(PROPERTIES) + 1, same.table()
    assert not same.drifted, same.table()
    assert same.unit == "lesions" and same.groups_reference < same.n_reference, same
    assert {c.unit for c in same.checks} == {"lesions"}, same.table()


def test_the_report_has_a_table_metrics_markdown_and_a_chart(tmp_path: Path) -> None:
    checks = combine(
        [
            class_mix_test(list("AABB"), list("ABBB")),
            *property_tests(
                _props(np.random.default_rng(3), 20), _props(np.random.default_rng(4), 20, 3.0)
            ),
        ],
        0.01,
    )
    report = DriftReport("models:/m@champion", "data", 100, 20, 0.01, checks)
    assert report.drifted and "property:red" in report.verdict()
    metrics = report.metrics()
    assert metrics["drift_detected"] == 1.0 and "drift_class_mix_p" in metrics, metrics
    assert metrics["drift_red_p"] < 0.01, metrics
    assert "| property:red" in report.markdown()
    png = chart_png(report, tmp_path / "drift.png")
    assert png.stat().st_size > 1000


def test_the_reference_is_the_champions_train_and_dev_rows() -> None:
    manifest = pd.DataFrame(
        {
            "key": list("abcd"),
            "split": ["train", "train", "dev", "test"],
            "keep": [True, False, True, True],
        }
    )
    assert list(reference_rows(manifest)["key"]) == ["a", "b", "c"], "undersampled rows stay"


def test_class_mix_false_alarms_stay_near_alpha_on_small_batches_with_rare_classes() -> None:
    """A batch of 12 images against the ISIC-like mix: expected counts of the rare classes are
    far below 1, where the asymptotic chi-square p-value alarms ~5x too often at 0.01."""
    rng = np.random.default_rng(5)
    p_values = np.array(
        [
            class_mix_test(
                rng.choice(CLASSES, 2000, p=MIX), rng.choice(CLASSES, 12, p=MIX), 500, seed=i
            ).p_value
            for i in range(600)
        ]
    )
    rate = float(np.mean(p_values < 0.01))
    assert rate <= 0.025, f"false alarms at alpha 0.01 on small batches: {rate}"


# --------------------------------------------------------------------------- lesions as units

SMALL = DriftParams(sample=120, permutations=999)  # 999: the floor 0.001 still passes Holm at 0.01


def _alarms(seed: int, trials: int, params: DriftParams, **world: object) -> np.ndarray:
    """Holm verdicts (and raw p-values) of `judge` over simulated ISIC-shaped trials."""
    rng = np.random.default_rng(seed)
    got = reports(rng, params, trials, reference_images=3000, dims=8, **world)
    return np.array([[r.drifted] + [c.p_value for c in r.checks] for r in got])


@pytest.mark.filterwarnings("ignore:ks_2samp")
@pytest.mark.parametrize("photos", [1, 3])
def test_no_drift_raises_false_alarms_at_most_alpha_whatever_the_photos_per_lesion(
    photos: int,
) -> None:
    """Photos of one lesion share its looks and its label; counted as independent images, three
    photos per lesion raised drift in ~45 % of no-drift checks at alpha 0.01."""
    got = _alarms(photos, 120, SMALL, photos=photos, current_images=120)
    alarms = int(got[:, 0].sum())
    # Binomial(120, 0.01): P(≥ 5 alarms) < 0.008
    assert alarms <= 4, f"{alarms}/120 false alarms at alpha 0.01, {photos} photos per lesion"
    per_check = (got[:, 1:] < 0.05).mean()
    assert per_check <= 0.07, f"raw p < 0.05 in {per_check:.3f} of the checks (want ≤ 0.05)"


@pytest.mark.filterwarnings("ignore:ks_2samp")
def test_a_batch_without_lesion_ids_against_a_lesion_reference_keeps_alpha() -> None:
    """A batch from the field names no lesions (each image its own group) while the reference
    has three photos per lesion: the sides' groups differ in size, the test must still hold."""
    got = _alarms(7, 100, SMALL, photos=3, current_photos=1, current_images=120, lesion_ids=False)
    per_check = (got[:, 1:] < 0.05).mean()
    assert got[:, 0].sum() <= 4, f"{got[:, 0].sum()}/100 false alarms at alpha 0.01"
    assert per_check <= 0.07, f"raw p < 0.05 in {per_check:.3f} of the checks (want ≤ 0.05)"


def test_a_shift_of_0_8_sd_in_one_property_is_still_found() -> None:
    """Promised power ≥ 0.80 at 0.8 SD with 100 lesions of 3 photos against 300 reference images."""
    params = DriftParams(permutations=999)
    got = _alarms(11, 30, params, photos=3, current_images=300, shift=0.8)
    found = got[:, 0].mean()
    assert found >= 0.7, f"0.8 SD shift found in {found:.2f} of 30 trials (promised ≥ 0.80)"


def test_the_report_names_its_unit_and_the_groups_of_each_side() -> None:
    rng = np.random.default_rng(3)
    report = judge(*simulate(rng, SMALL, photos=3, current_images=60, reference_images=600), SMALL)
    assert report.unit == "lesions" and report.groups_current == 20, report
    assert report.groups_reference == 200 and report.n_reference == 600, report
    assert {c.unit for c in report.checks} == {"lesions"}, report.table()
    mix = report.table().set_index("check").loc["class_mix"]
    assert (mix["groups_reference"], mix["groups_current"]) == (200, 20), mix
    assert "of lesions" in mix["detail"], mix["detail"]
    metrics = report.metrics()
    assert metrics["drift_current_groups"] == 20 and "drift_class_mix_p" in metrics, metrics
    assert "Unit of the tests: lesions (200 reference, 20 current)" in report.markdown()
    assert set(report.to_dict()) >= {"unit", "groups_reference", "groups_current", "unit_note"}

    field = judge(*simulate(rng, SMALL, photos=3, current_images=60, lesion_ids=False), SMALL)
    assert field.groups_current == 60 and "no lesion ids" in field.unit_note, field
    bare = judge(
        Side(pd.DataFrame({"label": list("AABB")}), _props(rng, 4)),
        Side(pd.DataFrame({"label": list("ABBB")}), _props(rng, 4)),
        SMALL,
    )
    assert bare.unit == "images" and {c.unit for c in bare.checks} == {"images"}, bare.table()


def test_grouped_statistics_reduce_to_the_image_ones_with_one_photo_per_lesion() -> None:
    """With every lesion one photo, the lesion-aware statistics are today's (scipy's KS, MMD)."""
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(30, 4)), rng.normal(size=(25, 4)) + 0.3
    ids = (np.arange(30), np.arange(25))
    plain, grouped = mmd_test(x, y, 199, seed=1), mmd_test(x, y, 199, seed=1, groups=ids)
    assert plain.statistic == pytest.approx(grouped.statistic), (plain, grouped)
    a, b = _props(rng, 40).assign(lesion_id=np.repeat(np.arange(20), 2)), _props(rng, 40, 0.5)
    perm = {c.check: c for c in property_tests(a, b, 199)}
    for name in PROPERTIES:
        ks = stats.ks_2samp(a[name], b[name]).statistic
        assert perm[f"property:{name}"].statistic == pytest.approx(ks), name
    assert perm["property:red"].groups_reference == 20 and perm["property:red"].unit == "lesions"


def test_the_class_mix_counts_each_lesion_once() -> None:
    ref = pd.DataFrame({"label": ["A"] * 6 + ["B"] * 2, "lesion_id": list("aaabbbcd")})
    cur = pd.DataFrame({"label": ["A", "B", "B"], "lesion_id": [None, "x", "x"]})
    check = class_mix_by_lesion(ref, cur)
    assert (check.groups_reference, check.groups_current) == (4, 2), check
    assert "+0.0% of lesions" in check.detail, check.detail  # B: 2 of 4 vs 1 of 2 lesions


def test_too_few_permutations_are_refused_even_without_embeddings() -> None:
    """Lesion-grouped property p-values come from permutations too: their floor must pass Holm."""
    with pytest.raises(ValueError, match=r"drift\.permutations 100 cannot"):
        DriftConfig(embeddings=False, permutations=100)
