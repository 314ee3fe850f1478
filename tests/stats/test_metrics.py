"""Metrics from probabilities on tiny hand-worked examples: split metrics, ECE, bias/variance, names."""

from __future__ import annotations

import math

import numpy as np
import pytest

from skin.stats.metrics import (
    SplitMetrics,
    bias_variance,
    diagnosis,
    expected_calibration_error,
    flat_metrics,
    split_metrics,
)

# Six images of MEL, NV and BCC; predictions (argmax) are MEL MEL NV NV NV BCC: one MEL read as NV.
CLASSES = ("MEL", "NV", "BCC")
Y = np.array([0, 0, 0, 1, 1, 2])
PROBS = np.array(
    [
        [0.70, 0.20, 0.10],
        [0.60, 0.30, 0.10],
        [0.40, 0.58, 0.02],  # MEL, predicted NV
        [0.20, 0.70, 0.10],
        [0.45, 0.55, 0.00],
        [0.15, 0.40, 0.45],
    ]
)
# By hand: recall MEL 2/3, NV 2/2, BCC 1/1; precision MEL 2/2, NV 2/3, BCC 1/1.
# OvR AUC: MEL positives {.7,.6,.4} vs negatives {.2,.45,.15}: .4 < .45 loses 1 of 9 pairs -> 8/9.
# NV positives {.7,.55} vs negatives {.2,.3,.58,.4}: .55 < .58 loses 1 of 8 pairs -> 7/8. BCC: 1.
AUC = {"MEL": 8 / 9, "NV": 7 / 8, "BCC": 1.0}


@pytest.fixture(scope="module")
def three() -> SplitMetrics:
    return split_metrics(Y, PROBS, CLASSES)


@pytest.fixture(scope="module")
def with_absent() -> SplitMetrics:
    """The same six images scored over four classes; DF has no image (its column is all zero)."""
    probs = np.hstack([PROBS, np.zeros((len(Y), 1))])
    return split_metrics(Y, probs, (*CLASSES, "DF"))


def test_accuracy_and_balanced_accuracy_match_the_hand_count(three: SplitMetrics) -> None:
    s = three.scalars
    assert s["accuracy"] == pytest.approx(5 / 6), f"5 of 6 argmax are right, got {s['accuracy']}"
    want = (2 / 3 + 1 + 1) / 3  # the mean of per-class recall, not the share of right answers
    assert s["balanced_accuracy"] == pytest.approx(want), (
        f"balanced accuracy should be the mean recall {want}, got {s['balanced_accuracy']}"
    )


def test_per_class_precision_recall_f1_and_support(three: SplitMetrics) -> None:
    pc = three.per_class
    assert list(pc.index) == list(CLASSES), f"rows should be the classes in order: {list(pc.index)}"
    want = {
        "MEL": {"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3},
        "NV": {"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2},
        "BCC": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1},
    }
    for cls, row in want.items():
        for metric, value in row.items():
            got = pc.loc[cls, metric]
            assert got == pytest.approx(value), f"{cls} {metric}: want {value}, got {got}"
    assert three.scalars["macro_f1"] == pytest.approx((0.8 + 0.8 + 1.0) / 3), three.scalars


def test_confusion_rows_are_true_classes_and_columns_predictions(three: SplitMetrics) -> None:
    c = three.confusion
    assert (c.index.name, c.columns.name) == ("true", "predicted"), (c.index, c.columns)
    assert c.loc["MEL", "NV"] == 1, f"the MEL read as NV belongs in row MEL, column NV:\n{c}"
    assert c.loc["NV", "MEL"] == 0, f"no NV was read as MEL:\n{c}"
    assert list(c.sum(axis=1)) == [3, 2, 1], f"row sums should be the true counts:\n{c}"
    assert int(np.trace(c.to_numpy())) == 5, f"the diagonal holds the 5 right answers:\n{c}"


def test_one_vs_rest_auc_and_its_macro_mean(three: SplitMetrics) -> None:
    for cls, value in AUC.items():
        got = three.per_class.loc[cls, "auc"]
        assert got == pytest.approx(value), f"{cls} OvR AUC: want {value}, got {got}"
    macro = three.scalars["macro_auc"]
    assert macro == pytest.approx(sum(AUC.values()) / 3), f"macro AUC {macro}"


def test_log_loss_is_the_mean_negative_log_of_the_true_class() -> None:
    got = split_metrics(Y, PROBS, CLASSES).scalars["log_loss"]
    want = -np.mean(np.log(PROBS[np.arange(len(Y)), Y]))
    assert got == pytest.approx(want, rel=1e-6), f"log loss want {want}, got {got}"


def test_a_class_without_images_has_no_auc_and_leaves_the_macro_means_alone(
    three: SplitMetrics, with_absent: SplitMetrics
) -> None:
    pc, s = with_absent.per_class, with_absent.scalars
    assert math.isnan(pc.loc["DF", "auc"]), f"DF has no positives: its AUC is undefined, got {pc}"
    assert pc.loc["DF", "support"] == 0, pc
    assert s["macro_auc"] == pytest.approx(three.scalars["macro_auc"]), (
        f"the absent class must not enter the macro AUC: {s['macro_auc']}"
    )
    assert s["macro_f1"] == pytest.approx(three.scalars["macro_f1"]), (
        f"the absent class must not pull macro F1 down: {s['macro_f1']}"
    )
    assert s["balanced_accuracy"] == pytest.approx(three.scalars["balanced_accuracy"]), s


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true:UserWarning")
def test_one_class_present_gives_no_auc_at_all() -> None:
    y = np.zeros(4, dtype=int)
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.8, 0.2]])
    m = split_metrics(y, probs, ("MEL", "NV"))
    assert m.per_class["auc"].isna().all(), f"AUC needs two classes present:\n{m.per_class}"
    assert math.isnan(m.scalars["macro_auc"]), m.scalars
    assert m.scalars["accuracy"] == pytest.approx(0.75), m.scalars


def calibrated(conf: float, n: int, right: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` two-class predictions of confidence `conf` for class 0, of which `right` are class 0."""
    probs = np.tile([conf, 1 - conf], (n, 1))
    y = np.array([0] * right + [1] * (n - right))
    return y, probs


def joined(*parts: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([p[0] for p in parts]), np.vstack([p[1] for p in parts])


def test_ece_of_a_perfectly_calibrated_model_is_zero() -> None:
    y, probs = joined(calibrated(0.8, 10, 8), calibrated(0.6, 5, 3))
    ece = expected_calibration_error(y, probs)
    assert ece == pytest.approx(0.0, abs=1e-9), f"80% right at 0.8 and 60% at 0.6: ECE {ece}"


def test_ece_of_an_overconfident_model_is_its_weighted_gap() -> None:
    y, probs = joined(calibrated(0.9, 10, 6), calibrated(0.7, 10, 7))
    ece = expected_calibration_error(y, probs)
    want = 0.5 * (0.9 - 0.6) + 0.5 * 0.0  # half the images 30 points overconfident
    assert ece == pytest.approx(want), f"ECE want {want}, got {ece}"


def test_ece_gaps_in_different_bins_add_up_and_do_not_cancel() -> None:
    y, probs = joined(calibrated(0.9, 10, 6), calibrated(0.6, 10, 9))  # over, then under
    ece = expected_calibration_error(y, probs)
    assert ece == pytest.approx(0.3), f"a 0.3 gap in each bin is an ECE of 0.3, got {ece}"


def test_bias_variance_read_against_human_level_and_train() -> None:
    got = bias_variance(0.80, 0.70, 0.65, human_level=0.95)
    want = {"bias": 0.15, "variance": 0.10, "variance_test": 0.15}
    assert got == pytest.approx(want), f"want {want}, got {got}"
    default = bias_variance(0.80, 0.70, 0.65)
    assert default["bias"] == pytest.approx(0.10), f"human level defaults to 0.90: {default}"


@pytest.mark.parametrize(
    ("bias", "variance", "advice"),
    [
        (0.0, 0.0, "collect harder data"),
        (-0.05, -0.01, "collect harder data"),
        (0.20, 0.05, "reduce bias first"),
        (0.10, 0.10, "reduce bias first"),  # a tie goes to bias
        (0.02, 0.10, "reduce variance first"),
        (-0.05, 0.03, "reduce variance first"),  # above human level, but overfitting
    ],
)
def test_diagnosis_names_what_to_work_on(bias: float, variance: float, advice: str) -> None:
    got = diagnosis(bias, variance)
    assert advice in got, f"bias {bias}, variance {variance}: want {advice!r}, got {got!r}"


def test_flat_metric_names_carry_split_metric_and_class(with_absent: SplitMetrics) -> None:
    flat = flat_metrics("test", with_absent)
    for name in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "log_loss", "ece"):
        assert flat[f"test_{name}"] == with_absent.scalars[name], f"test_{name} missing or wrong"
    for cls in CLASSES:
        for metric in ("precision", "recall", "f1", "auc"):
            got = flat[f"test_{metric}_{cls}"]
            assert got == with_absent.per_class.loc[cls, metric], f"test_{metric}_{cls}: {got}"
    assert flat["test_recall_MEL"] == pytest.approx(2 / 3), flat
    assert "test_auc_DF" not in flat, "a NaN AUC must not be logged"
    assert not any(math.isnan(v) for v in flat.values()), f"NaN values logged: {flat}"
    assert all(isinstance(v, float) for v in flat.values()), f"values must be floats: {flat}"


@pytest.mark.filterwarnings("ignore:A single label was found:UserWarning")
def test_flat_metrics_skip_a_nan_scalar() -> None:
    m = split_metrics(np.zeros(2, dtype=int), np.array([[0.9, 0.1], [0.6, 0.4]]), ("MEL", "NV"))
    flat = flat_metrics("dev", m)
    assert "dev_macro_auc" not in flat, f"macro AUC is NaN with one class: {sorted(flat)}"
    assert flat["dev_accuracy"] == 1.0, flat
    assert all(k.startswith("dev_") for k in flat), f"every name starts with the split: {flat}"
