"""Abstention: an out-of-distribution score per image, a threshold chosen on dev, and ISIC's UNK.

The score is computed on calibrated logits z / T (T: the temperature fitted on dev, see
`skin.stats.calibration`); higher means "more unknown". Two kinds:

- energy: E = -T * logsumexp(z / T) (Liu et al. 2020), uses every logit's size;
- msp: 1 - max softmax(z / T) (Hendrycks & Gimpel 2017), only the winning probability.

An image is answered `UNK` when its score is above the threshold; the threshold is the score
below which `coverage` of the in-distribution (known) dev images fall. Pure numpy/scipy.

Default `msp` (`predict.ood_score`), on evidence: `skin run --holdout-class C` on generated data
(tiny ResNet, 48 px, each of the 8 classes held out, 2 data seeds: 16 runs) gave test AUROC
known-vs-unknown of MSP 0.61 vs energy 0.59 on average; MSP ahead in 7 of 16, but energy was
never ahead by more than 0.10 while MSP was ahead by up to 0.28 (AK held out: 0.76/0.78 vs
0.53/0.49). MSP is also bounded (1 - confidence), so a threshold reads alike across models.
README "Unknown lesions" has the table; every held-out run logs both (`test_unk_auroc_msp`,
`test_unk_auroc_energy`) so the choice can be re-read on real images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy.special import logsumexp, softmax

UNK = "UNK"  # ISIC 2019's ninth category, "none of the others"
ScoreKind = Literal["energy", "msp"]
SCORE_KINDS: tuple[str, ...] = ("energy", "msp")
FORMULAS = {
    "energy": "-T * logsumexp(logits / T)",
    "msp": "1 - max softmax(logits / T)",
}
ENSEMBLE_FORMULA = "1 - max of the mean of the members' softmax(logits_i / T_i)"


@dataclass(frozen=True)
class Abstention:
    """What prediction needs to abstain: the score kind and the threshold chosen on dev."""

    kind: str
    threshold: float
    tta: bool | None = None  # whether dev was scored with TTA (None: not recorded)

    def __post_init__(self) -> None:
        if self.kind not in SCORE_KINDS:
            raise ValueError(f"abstention score {self.kind!r} is not one of {SCORE_KINDS}")
        if not np.isfinite(self.threshold):
            raise ValueError(f"abstention threshold must be a finite number, not {self.threshold}")

    def abstains(self, scores: np.ndarray) -> np.ndarray:
        """True where the image is answered UNK (score past the threshold)."""
        return np.asarray(scores) > self.threshold


def ood_scores(logits: np.ndarray, temperature: float, kind: str) -> np.ndarray:
    """The OOD score of each row of `logits` [N, classes] after temperature T; higher = unknown."""
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    z = np.asarray(logits, dtype=np.float64) / temperature
    if kind == "energy":
        return -temperature * logsumexp(z, axis=1)
    if kind == "msp":
        return msp_of_probs(softmax(z, axis=1))
    raise ValueError(f"OOD score {kind!r} is not one of {SCORE_KINDS}")


def msp_of_probs(probs: np.ndarray) -> np.ndarray:
    """The MSP score of probabilities already calibrated, 1 - max p: an ensemble has no logits,
    only its members' calibrated probabilities averaged, so its score is always this."""
    return 1.0 - np.asarray(probs, dtype=np.float64).max(axis=1)


def coverage_threshold(known_scores: np.ndarray, coverage: float) -> float:
    """The smallest threshold that accepts (score <= threshold) at least `coverage` of the
    known images given (dev): their ceil(coverage * n)-th smallest score."""
    if not 0 < coverage <= 1:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")
    scores = np.sort(np.asarray(known_scores, dtype=np.float64))
    if len(scores) == 0 or not np.isfinite(scores).all():
        raise ValueError("coverage threshold needs at least one finite known score")
    k = max(int(np.ceil(coverage * len(scores) - 1e-9)), 1)
    return float(scores[k - 1])


def auroc(known_scores: np.ndarray, unknown_scores: np.ndarray) -> float:
    """P(an unknown image scores higher than a known one), ties counted half (Mann-Whitney U)."""
    known, unknown = np.asarray(known_scores), np.asarray(unknown_scores)
    if len(known) == 0 or len(unknown) == 0:
        return float("nan")
    from scipy.stats import rankdata  # ~1 s to import: only when an AUROC is measured

    ranks = rankdata(np.concatenate([known, unknown]))
    u = ranks[len(known) :].sum() - len(unknown) * (len(unknown) + 1) / 2
    return float(u / (len(known) * len(unknown)))


def answers(probs: np.ndarray, abstained: np.ndarray) -> np.ndarray:
    """Predicted class index per image, -1 where it is answered UNK."""
    return np.where(abstained, -1, np.asarray(probs).argmax(axis=1))


def balanced_accuracy_with_unk(
    known_labels: np.ndarray, known_answers: np.ndarray, unknown_answers: np.ndarray
) -> float:
    """ISIC 2019's balanced accuracy over the known classes plus UNK: mean recall over every
    category that has images; a known image answered UNK (-1) is wrong for its class, an
    unknown image is right only when answered UNK."""
    recalls = [
        float((known_answers[known_labels == c] == c).mean()) for c in np.unique(known_labels)
    ]
    if len(unknown_answers):
        recalls.append(float((np.asarray(unknown_answers) == -1).mean()))
    return float(np.mean(recalls)) if recalls else float("nan")


def abstention_metrics(
    split: str,
    rule: Abstention,
    known: tuple[np.ndarray, np.ndarray, np.ndarray],
    unknown_scores: np.ndarray | None = None,
) -> dict[str, float]:
    """`<split>_abstain_rate`, accepted vs all known accuracy; with unknown images also
    `<split>_unk_auroc`, `<split>_unk_recall` and `<split>_balanced_accuracy_9`.

    `known` is (labels, probabilities, scores) of the known images."""
    labels, probs, scores = known
    out_known = rule.abstains(scores)
    correct = probs.argmax(axis=1) == labels
    accepted = ~out_known
    metrics = {
        f"{split}_abstain_rate": float(out_known.mean()),
        f"{split}_known_accuracy": float(correct.mean()),
        f"{split}_accepted_accuracy": float(correct[accepted].mean()) if accepted.any() else np.nan,
    }
    if unknown_scores is None or len(unknown_scores) == 0:
        return metrics
    out_unknown = rule.abstains(unknown_scores)
    unknown_answers = np.where(out_unknown, -1, 0)  # only "UNK or not" matters for them
    metrics |= {
        f"{split}_unk_auroc": auroc(scores, unknown_scores),
        f"{split}_unk_recall": float(out_unknown.mean()),
        f"{split}_balanced_accuracy_9": balanced_accuracy_with_unk(
            labels, answers(probs, out_known), unknown_answers
        ),
    }
    return metrics


def abstention_json(
    rule: Abstention,
    coverage: float,
    temperature: float | None,
    dev_scores: np.ndarray,
    **extra: Any,
) -> dict[str, Any]:
    """What `report/abstention.json` records (and prediction reads: `score`, `threshold`)."""
    return {
        "score": rule.kind,
        "threshold": rule.threshold,
        "formula": FORMULAS[rule.kind],
        "temperature": temperature,
        "rule": "answer UNK when score > threshold",
        "chosen_on": "dev known images",
        "coverage_target": coverage,
        "dev_coverage": float((~rule.abstains(dev_scores)).mean()),
        "dev_known_images": len(dev_scores),
        **extra,
    }


def read_abstention(doc: dict[str, Any], where: str) -> Abstention:
    """The rule stored in an abstention.json document; a clear error naming `where` if unusable."""
    try:
        tta = doc.get("tta")
        return Abstention(
            str(doc["score"]), float(doc["threshold"]), None if tta is None else bool(tta)
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{where}: no usable abstention rule (score, threshold): {err}") from err


def with_unk(classes: Sequence[str]) -> tuple[str, ...]:
    """The answer categories: the model's classes, then UNK."""
    return (*classes, UNK)
