"""Operating points: the threshold comes from dev alone and holds its specificity on new data."""

from __future__ import annotations

import numpy as np
import pytest

from skin.stats.operating import (
    choose_thresholds,
    flat_operating,
    operating_points,
    questions,
    rates,
    threshold_at_specificity,
)

CLASSES = ("BCC", "MEL", "NV", "SCC")


def population(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels in CLASSES' proportions 2:3:8:1; MEL and the malignant classes score higher."""
    y = rng.choice(4, n, p=np.array([2, 3, 8, 1]) / 14)
    logits = rng.normal(0, 1, (n, 4))
    logits[np.arange(n), y] += 1.5
    probs = np.exp(logits)
    return y, probs / probs.sum(1, keepdims=True)


def test_threshold_is_the_smallest_dev_score_that_reaches_the_target() -> None:
    rng = np.random.default_rng(0)
    scores, positive = rng.random(500).round(2), rng.random(500) < 0.3  # with ties
    for target in (0.5, 0.9, 0.95, 1.0):
        t = threshold_at_specificity(scores, positive, target)
        assert rates(scores, positive, t)[1] >= target, f"dev specificity below {target}"
        lower = np.unique(scores)[np.unique(scores) < t]
        if len(lower):
            assert rates(scores, positive, lower[-1])[1] < target, "a smaller score also works"
    assert (
        threshold_at_specificity(np.array([0.1, 0.2, 0.9]), np.array([0, 0, 1], bool), 1.0) == 0.9
    )
    with pytest.raises(ValueError, match="target"):
        threshold_at_specificity(scores, positive, 1.5)
    with pytest.raises(ValueError, match="negative"):
        threshold_at_specificity(scores, np.ones(500, bool), 0.9)


def test_thresholds_are_a_function_of_dev_only() -> None:
    rng = np.random.default_rng(1)
    dev = population(rng, 800)
    test_a, test_b = population(rng, 600), population(rng, 300)
    a = operating_points(dev, test_a, CLASSES, n_resamples=50)
    b = operating_points(dev, test_b, CLASSES, n_resamples=50)
    assert [p.threshold for p in a] == [p.threshold for p in b], "test data moved a threshold"
    assert [p.threshold for p in a] == [t.value for t in choose_thresholds(*dev, CLASSES)]
    assert [p.sensitivity for p in a] != [p.sensitivity for p in b], "test data must be read"
    for p in a:
        assert p.dev_specificity >= p.target, f"{p.name} at {p.target}: dev {p.dev_specificity}"


def test_test_specificity_lands_near_the_target_on_the_same_population() -> None:
    rng = np.random.default_rng(2)
    dev, test = population(rng, 20_000), population(rng, 20_000)
    points = operating_points(dev, test, CLASSES, n_resamples=200)
    assert {(p.name, p.target) for p in points} == {
        (n, t) for n in ("mel", "malignant") for t in (0.9, 0.95)
    }
    for p in points:
        assert abs(p.specificity - p.target) < 0.015, f"{p.name} {p.target}: {p.specificity:.3f}"
        low, high = p.sensitivity_ci
        assert low < p.sensitivity < high and high - low < 0.1, (p.name, p.sensitivity_ci)
        assert p.n_positive + p.n_negative == 20_000


def test_malignant_scores_sum_the_malignant_classes() -> None:
    assert questions(CLASSES) == {"mel": [1], "malignant": [1, 0, 3]}
    assert questions(("cat", "dog")) == {}, "no melanoma, no malignant class: nothing to answer"
    assert questions(("MEL", "BCC")) == {"mel": [0]}, "every class malignant: no malignant split"
    y = np.array([0, 1, 2, 3, 2, 2])
    probs = np.array(
        [[0.5, 0.1, 0.3, 0.1], [0.1, 0.6, 0.2, 0.1], [0.1, 0.1, 0.7, 0.1],
         [0.1, 0.1, 0.1, 0.7], [0.3, 0.1, 0.5, 0.1], [0.05, 0.05, 0.85, 0.05]]
    )  # fmt: skip
    (t,) = choose_thresholds(y, probs, CLASSES, targets=(0.6,), malignant=("MEL", "BCC", "SCC"))[1:]
    assert t.name == "malignant" and t.columns == (1, 0, 3)
    # malignant scores 0.7, 0.8, 0.3, 0.9, 0.5, 0.15: two of three benign below 0.5 -> 0.67 >= 0.6
    assert t.value == pytest.approx(0.5)


def test_flat_names_and_no_intervals_when_the_bootstrap_is_off() -> None:
    rng = np.random.default_rng(3)
    dev, test = population(rng, 500), population(rng, 500)
    flat = flat_operating(operating_points(dev, test, CLASSES, targets=(0.9,), n_resamples=100))
    for name in ("mel", "malignant"):
        assert f"test_{name}_sensitivity_at_spec90" in flat
        assert f"test_{name}_sensitivity_at_spec90_ci_low" in flat
        assert f"test_{name}_specificity_at_spec90_ci_high" in flat
        assert f"{name}_threshold_at_spec90" in flat
    off = flat_operating(operating_points(dev, test, CLASSES, n_resamples=0))
    assert "test_mel_sensitivity_at_spec95" in off and not any("_ci_" in k for k in off)


def test_lesions_are_resampled_on_test() -> None:
    rng = np.random.default_rng(4)
    dev, (y, probs) = population(rng, 500), population(rng, 300)
    y3, probs3 = np.repeat(y, 3), np.repeat(probs, 3, axis=0)
    lesion = np.repeat(np.arange(300), 3)
    grouped = operating_points(dev, (y3, probs3), CLASSES, lesion, targets=(0.9,))
    naive = operating_points(dev, (y3, probs3), CLASSES, None, targets=(0.9,))
    for g, n in zip(grouped, naive, strict=True):
        gw, nw = np.diff(g.sensitivity_ci)[0], np.diff(n.sensitivity_ci)[0]
        assert gw > 1.3 * nw, f"{g.name}: lesion width {gw:.3f} vs image width {nw:.3f}"
