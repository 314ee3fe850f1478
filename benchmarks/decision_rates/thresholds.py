"""thresholds: UNK coverage and operating-point specificity on test, for one model and a 5-member
ensemble, every threshold chosen on dev probabilities of the kind that is served.

Simulated on ISIC 2019's shape: its class imbalance, 1-3 photos per lesion (a photo shares its
lesion's appearance), dev and test of ~3,800 images each (15 % of 25,331). Each member's logits
are the truth plus noise partly shared by all members (members trained on overlapping data make
correlated errors), scaled to be overconfident; each member is calibrated by its own temperature
fitted on dev (`skin.stats.calibration`). The single model is one member; the ensemble serves what
`skin.search.ensemble.served_probabilities` gives (the members' mean, then the ensemble's own
temperature fitted on that mean over dev), and both choose their UNK threshold
(`skin.stats.abstain.coverage_threshold`) and operating points (`skin.stats.operating.operating_points`) on
their own dev probabilities, then are read on test.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from benchmarks.common import Context
from benchmarks.decision_rates import Rate, near
from skin.base.labels import CLASSES, ISIC2019_COUNTS
from skin.search.ensemble import served_probabilities
from skin.stats.abstain import coverage_threshold, msp_of_probs
from skin.stats.calibration import apply_temperature, fit_temperature
from skin.stats.operating import MALIGNANT, operating_points

COVERAGE = 0.95  # predict.abstain_coverage's default
COVERAGE_TOLERANCE = 0.03  # test abstention promised within ± this of 1 - COVERAGE
SPEC_TOLERANCE = 0.01  # mean test specificity promised within ± this of the target
MEMBERS = 5
DEV_LESIONS = 1900  # ~3,800 images at 1-3 photos per lesion: ISIC 2019's 15 % dev (and test)
SHARE = np.array([ISIC2019_COUNTS[c] for c in CLASSES], dtype=float) / sum(ISIC2019_COUNTS.values())


@dataclass(frozen=True)
class Shape:
    """How members see the images: class signal, lesion and photo noise, member noise, its
    share common to all members (rho), and overconfidence (logits scaled by `scale`)."""

    signal: float = 4.0
    lesion_sd: float = 1.0
    photo_sd: float = 0.5
    member_sd: float = 2.0
    rho: float = 0.6
    scale: float = 1.3


@dataclass(frozen=True)
class Split:
    """One split's labels, lesion of each image and every member's logits [members, N, classes]."""

    y: np.ndarray
    groups: np.ndarray
    logits: np.ndarray


@dataclass(frozen=True)
class Outcome:
    """What a model's dev-chosen thresholds gave on test."""

    abstain_rate: float
    specificity: dict[str, float]  # "mel_at_spec90" -> test specificity
    sensitivity: dict[str, float]


def simulate(rng: np.random.Generator, n_lesions: int, shape: Shape, members: int) -> Split:
    """ISIC-shaped images, 1-3 photos per lesion, and `members` correlated noisy views of them."""
    n_classes = len(CLASSES)
    lesion_y = rng.choice(n_classes, n_lesions, p=SHARE)
    groups = np.repeat(np.arange(n_lesions), rng.integers(1, 4, n_lesions))
    lesion = shape.signal * np.eye(n_classes)[lesion_y]
    lesion += shape.lesion_sd * rng.standard_normal((n_lesions, n_classes))
    truth = lesion[groups] + shape.photo_sd * rng.standard_normal((len(groups), n_classes))
    shared = np.sqrt(shape.rho) * rng.standard_normal((len(groups), n_classes))
    own = np.sqrt(1 - shape.rho) * rng.standard_normal((members, len(groups), n_classes))
    logits = shape.scale * (truth + shape.member_sd * (shared + own))
    return Split(lesion_y[groups], groups, logits)


def decide(dev: tuple[np.ndarray, np.ndarray], test: Split, test_probs: np.ndarray) -> Outcome:
    """The UNK threshold and operating points chosen on dev (labels, probabilities), read on test."""
    threshold = coverage_threshold(msp_of_probs(dev[1]), COVERAGE)
    points = operating_points(
        dev, (test.y, test_probs), CLASSES, test.groups, malignant=MALIGNANT, n_resamples=0
    )
    names = [f"{p.name}_at_spec{round(p.target * 100)}" for p in points]
    return Outcome(
        float((msp_of_probs(test_probs) > threshold).mean()),
        dict(zip(names, (p.specificity for p in points), strict=True)),
        dict(zip(names, (p.sensitivity for p in points), strict=True)),
    )


def trial(
    rng: np.random.Generator, shape: Shape = Shape(), n_lesions: int = DEV_LESIONS
) -> dict[str, Outcome]:
    """One dev and one test split: member 0 alone, and the members as one ensemble."""
    dev, test = (simulate(rng, n_lesions, shape, MEMBERS) for _ in range(2))
    temperatures = [fit_temperature(z, dev.y) for z in dev.logits]
    dev_p = [apply_temperature(z, t) for z, t in zip(dev.logits, temperatures, strict=True)]
    test_p = [apply_temperature(z, t) for z, t in zip(test.logits, temperatures, strict=True)]
    served, _ = served_probabilities(
        {"dev": np.mean(dev_p, axis=0), "test": np.mean(test_p, axis=0)}, dev.y
    )
    return {
        "single": decide((dev.y, dev_p[0]), test, test_p[0]),
        "ensemble": decide((dev.y, served["dev"]), test, served["test"]),
    }


def within(values: list[float], target: float) -> float:
    """The share of trials whose test rate falls within ± COVERAGE_TOLERANCE of the target."""
    return float(np.mean(np.abs(np.asarray(values) - target) <= COVERAGE_TOLERANCE))


def coverage_row(label: str, outcomes: list[Outcome]) -> Rate:
    """UNK coverage on test: the mean over trials within ± COVERAGE_TOLERANCE of the target."""
    covered = [1 - o.abstain_rate for o in outcomes]
    return near(
        f"UNK coverage on test, {label}",
        COVERAGE,
        COVERAGE_TOLERANCE,
        covered,
        note="threshold for the coverage chosen on dev (skin.stats.abstain.coverage_threshold) on the"
        f" probabilities the model serves; {within(covered, COVERAGE):.0%} of trials within"
        f" ± {COVERAGE_TOLERANCE:g}",
    )


def specificity_row(label: str, name: str, outcomes: list[Outcome]) -> Rate:
    """One operating point's test specificity: the mean over trials within ± SPEC_TOLERANCE of
    its target (the dev order statistic's bias and the mean's Monte-Carlo error fit inside)."""
    target = int(name.rsplit("spec", 1)[1]) / 100
    spec = [o.specificity[name] for o in outcomes]
    sensitivity = np.mean([o.sensitivity[name] for o in outcomes])
    return near(
        f"specificity on test, {name}, {label}",
        target,
        SPEC_TOLERANCE,
        spec,
        note="mean over trials of the test specificity (~3,800 test images) at the threshold"
        f" chosen on dev for the target (skin.stats.operating); {within(spec, target):.0%} of trials"
        f" within ± {COVERAGE_TOLERANCE:g}; mean test sensitivity {sensitivity:.3f}",
    )


def rows(ctx: Context) -> list[Rate]:
    """UNK coverage and each operating point's specificity on test, single model and ensemble."""
    rng = np.random.default_rng(21)
    trials = [trial(rng) for _ in range(ctx.pick(100, 600))]
    out = []
    for model, label in (("single", "single model"), ("ensemble", f"{MEMBERS}-member ensemble")):
        outcomes = [t[model] for t in trials]
        out.append(coverage_row(label, outcomes))
        out += [specificity_row(label, name, outcomes) for name in outcomes[0].specificity]
    return out
