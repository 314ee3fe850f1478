"""Abstention on simulated scores: the coverage threshold, AUROC, and balanced accuracy with UNK."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.special import logsumexp, softmax

from skin.stats.abstain import (
    Abstention,
    abstention_metrics,
    auroc,
    balanced_accuracy_with_unk,
    coverage_threshold,
    ood_scores,
    read_abstention,
)


@pytest.mark.parametrize("coverage", [0.5, 0.8, 0.95, 0.99])
def test_a_threshold_chosen_on_one_sample_covers_the_target_on_fresh_samples(
    coverage: float,
) -> None:
    rng = np.random.default_rng(0)
    covered = []
    for _ in range(200):
        dev, fresh = rng.normal(size=2000), rng.normal(size=2000)
        threshold = coverage_threshold(dev, coverage)
        assert (dev <= threshold).mean() >= coverage, "dev itself is covered at least"
        covered.append((fresh <= threshold).mean())
    assert np.mean(covered) == pytest.approx(coverage, abs=0.005), "unbiased on new images"
    assert np.std(covered) < 0.02, "and close on each sample"


def test_the_threshold_is_the_smallest_that_reaches_the_coverage() -> None:
    scores = np.array([5.0, 1.0, 3.0, 2.0, 4.0])
    assert coverage_threshold(scores, 0.6) == 3.0  # 3 of 5 at or below
    assert coverage_threshold(scores, 0.61) == 4.0
    assert coverage_threshold(scores, 1.0) == 5.0, "coverage 1 accepts every dev image"
    assert coverage_threshold(scores, 0.01) == 1.0
    with pytest.raises(ValueError, match="coverage"):
        coverage_threshold(scores, 0.0)
    with pytest.raises(ValueError, match="finite"):
        coverage_threshold(np.array([1.0, np.nan]), 0.5)


def brute_force_auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    pairs = [(u > k) + 0.5 * (u == k) for k, u in itertools.product(known, unknown)]
    return float(np.mean(pairs))


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_a_count_over_every_pair_ties_included(seed: int) -> None:
    rng = np.random.default_rng(seed)
    known = rng.integers(0, 6, size=37).astype(float)  # few values: many ties
    unknown = rng.integers(2, 9, size=23).astype(float)
    assert auroc(known, unknown) == pytest.approx(brute_force_auroc(known, unknown))


def test_auroc_reads_one_for_separated_scores_and_half_for_identical_ones() -> None:
    assert auroc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 1.0
    assert auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 0.0
    assert auroc(np.ones(4), np.ones(3)) == 0.5
    assert np.isnan(auroc(np.ones(4), np.array([])))


def test_the_scores_are_energy_and_one_minus_the_top_calibrated_probability() -> None:
    rng = np.random.default_rng(1)
    logits, t = rng.normal(size=(10, 8)) * 3, 1.7
    energy = ood_scores(logits, t, "energy")
    np.testing.assert_allclose(energy, -t * logsumexp(logits / t, axis=1))
    msp = ood_scores(logits, t, "msp")
    np.testing.assert_allclose(msp, 1 - softmax(logits / t, axis=1).max(axis=1))
    confident = np.array([[20.0, 0, 0], [1.0, 0.9, 0.8]])
    for kind in ("energy", "msp"):
        low, high = ood_scores(confident, 1.0, kind)
        assert low < high, f"{kind}: a confident image scores lower (more known)"
    with pytest.raises(ValueError, match="one of"):
        ood_scores(logits, t, "entropy")
    with pytest.raises(ValueError, match="temperature"):
        ood_scores(logits, 0.0, "msp")


def test_balanced_accuracy_with_unk_counts_abstained_knowns_wrong_and_unknowns_right() -> None:
    labels = np.array([0, 0, 1, 1])
    answers = np.array([0, -1, 1, 1])  # the second image of class 0 answered UNK
    unknown = np.array([-1, 0, -1, -1])  # three of four unknowns answered UNK
    expected = np.mean([0.5, 1.0, 0.75])
    assert balanced_accuracy_with_unk(labels, answers, unknown) == pytest.approx(expected)
    assert balanced_accuracy_with_unk(labels, answers, np.array([])) == pytest.approx(0.75)


def test_metrics_at_the_threshold_read_the_simulated_truth() -> None:
    rng = np.random.default_rng(2)
    n, k = 4000, 3
    labels = rng.integers(0, k, n)
    right = rng.random(n) < 0.8
    probs = np.full((n, k), 0.1)
    probs[np.arange(n), np.where(right, labels, (labels + 1) % k)] = 0.8
    scores = rng.normal(size=n) + np.where(right, 0.0, 1.0)  # mistakes look less known
    unknown = rng.normal(loc=2.0, size=1000)
    rule = Abstention("energy", coverage_threshold(scores, 0.9))
    m = abstention_metrics("test", rule, (labels, probs, scores), unknown)
    assert m["test_abstain_rate"] == pytest.approx(0.1, abs=0.005)
    assert m["test_known_accuracy"] == pytest.approx(right.mean())
    assert m["test_accepted_accuracy"] > m["test_known_accuracy"], "abstaining drops mistakes"
    assert m["test_unk_auroc"] == pytest.approx(auroc(scores, unknown))
    assert m["test_unk_recall"] == pytest.approx((unknown > rule.threshold).mean())
    assert 0 < m["test_balanced_accuracy_9"] < 1
    assert "test_unk_auroc" not in abstention_metrics("dev", rule, (labels, probs, scores))


def test_a_stored_rule_is_checked_when_read() -> None:
    rule = read_abstention({"score": "msp", "threshold": 0.4}, "x.json")
    assert rule == Abstention("msp", 0.4)
    assert rule.abstains(np.array([0.3, 0.4, 0.5])).tolist() == [False, False, True]
    with pytest.raises(ValueError, match=r"x\.json"):
        read_abstention({"score": "msp"}, "x.json")
    with pytest.raises(ValueError, match=r"x\.json"):
        read_abstention({"score": "softmax", "threshold": 0.4}, "x.json")


def test_a_stored_rule_remembers_whether_dev_was_scored_with_tta() -> None:
    assert read_abstention({"score": "msp", "threshold": 0.3, "tta": True}, "x").tta is True
    assert read_abstention({"score": "msp", "threshold": 0.3}, "x").tta is None, "older files"
