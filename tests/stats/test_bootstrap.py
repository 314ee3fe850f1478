"""Bootstrap intervals: exact point values, coverage near 95 %, lesions not images, the paired gate."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

from skin.stats.bootstrap import (
    balanced_from_recall,
    confidence_intervals,
    flat_intervals,
    hit_features,
    macro_auc,
    paired_bootstrap,
    recall_from_sums,
    resample_sums,
    weighted_auc,
)

RECALL = np.array([0.85, 0.6, 0.7])  # a known population: the classifier's recall per class
SIZES = (120, 60, 40)


def simulate(
    rng: np.random.Generator, recall: np.ndarray, sizes: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities whose argmax is right with probability recall[class]."""
    n_classes = len(sizes)
    y = np.repeat(np.arange(n_classes), sizes)
    hit = rng.random(len(y)) < recall[y]
    pred = np.where(hit, y, (y + rng.integers(1, n_classes, len(y))) % n_classes)
    probs = rng.random((len(y), n_classes)) * 0.5
    probs[np.arange(len(y)), pred] = 1
    return y, probs / probs.sum(1, keepdims=True)


def width(interval: tuple[float, float]) -> float:
    return interval[1] - interval[0]


def test_resampled_statistics_equal_sklearn_on_the_drawn_images() -> None:
    rng = np.random.default_rng(0)
    y, probs = simulate(rng, RECALL, (30, 20, 10))
    probs = probs.round(1)  # ties, which AUC must count as a half
    counts = rng.integers(0, 4, len(y))  # one resample, as how often each image was drawn
    rows = np.repeat(np.arange(len(y)), counts)
    w = counts[None, :].astype(float)
    for c in range(3):
        got = weighted_auc(w, y == c, probs[:, c])[0]
        assert got == pytest.approx(roc_auc_score(y[rows] == c, probs[rows, c])), f"class {c}"
    sums = counts @ hit_features(y, probs.argmax(1), 3)
    pred = probs.argmax(1)
    assert balanced_from_recall(recall_from_sums(sums)) == pytest.approx(
        balanced_accuracy_score(y[rows], pred[rows])
    )
    expected_auc = np.mean([roc_auc_score(y[rows] == c, probs[rows, c]) for c in range(3)])
    assert macro_auc(w, y, probs)[0] == pytest.approx(expected_auc)


def test_every_resample_keeps_each_class_size_when_images_are_their_own_lesions() -> None:
    y = np.repeat([0, 1, 2], [50, 7, 3])
    onehot = np.eye(3)[y]
    sums = resample_sums(onehot, y, n_resamples=200, seed=1)
    assert (sums == [50, 7, 3]).all(), "stratified: each class keeps its number of images"


def test_intervals_cover_the_true_balanced_accuracy_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(2026)
    truth = {"balanced_accuracy": RECALL.mean(), "accuracy": RECALL @ SIZES / sum(SIZES)}
    covered = dict.fromkeys([*truth, "recall_2"], 0)
    repeats = 300
    for r in range(repeats):
        y, probs = simulate(rng, RECALL, SIZES)
        iv = confidence_intervals(y, probs, n_resamples=1000, seed=r, auc=False)
        for name, value in truth.items():
            low, high = iv.scalars[name]
            covered[name] += low <= value <= high
        covered["recall_2"] += iv.recall[2][0] <= RECALL[2] <= iv.recall[2][1]
    for name, hits in covered.items():
        assert 0.91 <= hits / repeats <= 0.98, f"{name}: coverage {hits / repeats:.3f}, want ~0.95"


def test_lesions_not_images_are_resampled_so_repeat_photos_widen_the_interval() -> None:
    rng = np.random.default_rng(3)
    y, probs = simulate(rng, RECALL, SIZES)
    copies = 4  # every lesion photographed four times: the copies agree, they add no evidence
    y4, probs4 = np.repeat(y, copies), np.repeat(probs, copies, axis=0)
    lesion = np.repeat(np.arange(len(y)), copies)
    by_lesion = confidence_intervals(y4, probs4, lesion, seed=0)
    by_image = confidence_intervals(y4, probs4, None, seed=0)
    once = confidence_intervals(y, probs, None, seed=0)
    for name in ("accuracy", "balanced_accuracy", "macro_auc"):
        grouped, naive = width(by_lesion.scalars[name]), width(by_image.scalars[name])
        assert grouped > 1.5 * naive, f"{name}: lesion width {grouped:.3f} vs image {naive:.3f}"
        assert grouped == pytest.approx(width(once.scalars[name]), rel=0.25), name
    assert by_lesion.units == len(y) and by_image.units == len(y4)


def test_a_missing_lesion_id_makes_the_image_its_own_lesion() -> None:
    y, probs = simulate(np.random.default_rng(4), RECALL, (20, 15, 10))
    missing = np.array([None, np.nan, ""] * 15, dtype=object)
    assert confidence_intervals(y, probs, missing, seed=5) == confidence_intervals(y, probs, seed=5)
    some = missing.copy()
    some[:10] = [f"L{i // 2}" for i in range(10)]  # 5 lesions of 2 photos, all in class 0
    assert confidence_intervals(y, probs, some, seed=5).units == 45 - 5


def test_a_lesion_with_two_labels_is_refused_by_name() -> None:
    y = np.array([0, 1, 1])
    probs = np.eye(2)[[0, 1, 0]]
    with pytest.raises(ValueError, match="L7"):
        confidence_intervals(y, probs, ["L7", "L7", "L8"])


def test_bad_inputs_name_the_object() -> None:
    with pytest.raises(ValueError, match="class indices"):
        confidence_intervals(np.array([0, 3]), np.ones((2, 3)) / 3)
    with pytest.raises(ValueError, match="challenger"):
        paired_bootstrap(np.array([0, 1]), np.eye(2), np.ones((3, 2)))


def test_same_seed_same_interval_and_zero_resamples_turns_it_off() -> None:
    y, probs = simulate(np.random.default_rng(6), RECALL, SIZES)
    a, b = confidence_intervals(y, probs, seed=1), confidence_intervals(y, probs, seed=1)
    assert a == b
    assert confidence_intervals(y, probs, seed=2) != a
    off = confidence_intervals(y, probs, n_resamples=0)
    assert off.scalars == {} and off.recall == {} and flat_intervals("test", off, "abc") == {}
    paired = paired_bootstrap(y, probs, probs, n_resamples=0)
    assert np.isnan(paired.low) and np.isnan(paired.high) and paired.difference == 0


def test_interval_brackets_the_point_estimate_and_names_follow_the_metrics() -> None:
    y, probs = simulate(np.random.default_rng(7), RECALL, SIZES)
    iv = confidence_intervals(y, probs, seed=0)
    pred = probs.argmax(1)
    points = {
        "accuracy": accuracy_score(y, pred),
        "balanced_accuracy": balanced_accuracy_score(y, pred),
        "macro_auc": np.mean([roc_auc_score(y == c, probs[:, c]) for c in range(3)]),
    }
    for name, point in points.items():
        low, high = iv.scalars[name]
        assert low < point < high, f"{name}: {point} outside ({low}, {high})"
    flat = flat_intervals("test", iv, ("AK", "BCC", "MEL"))
    assert flat["test_balanced_accuracy_ci_low"] == iv.scalars["balanced_accuracy"][0]
    assert flat["test_recall_MEL_ci_high"] == iv.recall[2][1]
    assert len(flat) == 2 * (3 + 3)


def test_paired_bootstrap_of_equal_models_contains_zero_and_a_better_one_clears_it() -> None:
    rng = np.random.default_rng(8)
    repeats, contains_zero = 60, 0
    for r in range(repeats):
        y, champion = simulate(rng, RECALL, SIZES)
        _, challenger = simulate(rng, RECALL, SIZES)  # another seed, equal in truth
        d = paired_bootstrap(y, champion, challenger, seed=r)
        contains_zero += d.low <= 0 <= d.high
        assert d.difference == pytest.approx(d.challenger - d.champion)
    assert contains_zero / repeats >= 0.9, f"equal models: 0 inside only {contains_zero}/{repeats}"
    y, champion = simulate(rng, RECALL, SIZES)
    _, better = simulate(rng, RECALL + 0.12, SIZES)
    d = paired_bootstrap(y, champion, better, seed=0)
    assert d.low > 0, f"a clearly better model: interval ({d.low:.3f}, {d.high:.3f})"
    assert d.champion == pytest.approx(balanced_accuracy_score(y, champion.argmax(1)))
    assert d.n == len(y) and d.units == len(y)


def test_pairing_narrows_the_interval_when_models_agree_on_most_images() -> None:
    y, champion = simulate(np.random.default_rng(9), RECALL, SIZES)
    challenger = champion.copy()
    flip = np.flatnonzero(champion.argmax(1) != y)[:5]  # the challenger fixes five mistakes
    challenger[flip] = np.eye(3)[y[flip]]
    d = paired_bootstrap(y, champion, challenger, seed=0)
    assert d.low > 0, "five fixed mistakes and nothing broken is a sure improvement"
    unpaired = width(confidence_intervals(y, champion, seed=0).scalars["balanced_accuracy"])
    assert d.high - d.low < unpaired / 2
