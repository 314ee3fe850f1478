"""gate: how often the promotion gate promotes a model no better than the champion, finds a real
improvement, blocks a better model for a slice, and finds a slice that truly got worse.

Each trial draws an ISIC-shaped dev set (ISIC 2019's class shares, 1-3 photos per lesion, 18
metadata slices: 7 sites, 2 sexes, 6 age bands, 3 sources) and two models whose errors share
an image's difficulty (a photo of a hard lesion is hard for both), then runs the project's own
`skin.evaluate.compare.compare` and `skin.release.registry.paired_gate` on them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import norm

from benchmarks.common import Context
from benchmarks.decision_rates import Rate, at_least, at_most, wilson
from skin.base.labels import CLASSES, ISIC2019_COUNTS
from skin.evaluate.compare import compare
from skin.release.registry import CHAMPION, paired_gate

# The champion's recall per class (balanced accuracy ~0.64, an ISIC 2019 model of modest skill).
RECALL = {"AK": 0.5, "BCC": 0.75, "BKL": 0.6, "DF": 0.6, "MEL": 0.6, "NV": 0.85,
          "SCC": 0.45, "VASC": 0.7}  # fmt: skip
SITES = {"anterior torso": 0.26, "lower extremity": 0.2, "head/neck": 0.16,
         "upper extremity": 0.15, "posterior torso": 0.13, "palms/soles": 0.05,
         "oral/genital": 0.05}  # fmt: skip
AGES = {5: 0.05, 30: 0.2, 50: 0.32, 70: 0.3, 85: 0.08, np.nan: 0.05}  # 5 bands, and missing
SOURCES = {"BCN_20000": 0.5, "HAM10000": 0.3, "MSK": 0.2}
PHOTOS = (0.5, 0.3, 0.2)  # P(1, 2, 3 photos of a lesion): 1.7 per lesion, as ISIC 2019
SHARED, OWN = 0.5, 0.5  # variance of an image's difficulty (both models) and of each model's own
SMALL_SLICE = ("anatom_site_general", "palms/soles")  # ~5 % of dev: ~125 images of 2,500
OLD_SLICE = ("age_approx", 85.0)  # ages 80-99, ~8 % of dev: ~200 images of 2,500


def isic_dev(rng: np.random.Generator, n_images: int) -> pd.DataFrame:
    """An ISIC-shaped dev set: key, label, lesion_id and the slice metadata (per lesion)."""
    n_lesions = int(n_images / np.dot(PHOTOS, (1, 2, 3))) + 1
    share = np.array([ISIC2019_COUNTS[c] for c in CLASSES], dtype=float)
    lesions = pd.DataFrame({
        "label": rng.choice(CLASSES, n_lesions, p=share / share.sum()),
        "anatom_site_general": _draw(rng, SITES, n_lesions),
        "sex": rng.choice(["female", "male"], n_lesions),
        "age_approx": _draw(rng, AGES, n_lesions).astype(float),
        "source": _draw(rng, SOURCES, n_lesions),
        "difficulty": rng.normal(0, np.sqrt(SHARED * 0.6), n_lesions),
    })  # fmt: skip
    photos = rng.choice((1, 2, 3), n_lesions, p=PHOTOS)
    dev = lesions.loc[np.repeat(np.arange(n_lesions), photos)].iloc[:n_images]
    dev = dev.reset_index().rename(columns={"index": "lesion"})
    dev["difficulty"] += rng.normal(0, np.sqrt(SHARED * 0.4), len(dev))  # this photo's own part
    dev["lesion_id"] = "L" + dev.pop("lesion").astype(str)
    dev.insert(0, "key", [f"ISIC_{i:07d}" for i in range(len(dev))])
    return dev


def _draw(rng: np.random.Generator, shares: dict, n: int) -> np.ndarray:
    values, p = list(shares), np.array(list(shares.values()), dtype=float)
    return np.asarray(values, dtype=object)[rng.choice(len(values), n, p=p / p.sum())]


def model_probs(
    rng: np.random.Generator, dev: pd.DataFrame, gain: float | np.ndarray = 0.0
) -> np.ndarray:
    """[N, 8] probabilities of a model right with recall RECALL[class] + gain (per image, or one
    number), through the image's shared difficulty; a wrong answer is a uniformly wrong class."""
    y = dev["label"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    recall = np.clip(np.array([RECALL[c] for c in CLASSES])[y] + gain, 0.01, 0.99)
    threshold = norm.ppf(recall) * np.sqrt(SHARED + OWN)
    right = dev["difficulty"].to_numpy() + rng.normal(0, np.sqrt(OWN), len(y)) < threshold
    wrong = (y + rng.integers(1, len(CLASSES), len(y))) % len(CLASSES)
    probs = rng.random((len(y), len(CLASSES))) * 0.3
    probs[np.arange(len(y)), np.where(right, y, wrong)] = 1.0
    return probs / probs.sum(1, keepdims=True)


def with_probs(dev: pd.DataFrame, probs: np.ndarray) -> pd.DataFrame:
    """`dev` with the challenger's `prob_<CLASS>` columns, as a predictions_dev.parquet has."""
    return dev.assign(**{f"prob_{c}": probs[:, j] for j, c in enumerate(CLASSES)})


def slice_loss(
    dev: pd.DataFrame, loss: float, gain: float = 0.0, where: tuple[str, str] = SMALL_SLICE
) -> np.ndarray:
    """Per image: `gain` everywhere but on the slice `where`, where every recall falls by `loss`."""
    column, value = where
    return np.where(dev[column] == value, -loss, gain)


def gate_trial(
    seed: int,
    n_images: int,
    gain: float | str,
    *,
    n_resamples: int = 1000,
    max_slice_drop: float = 0.05,
    loss: float = 0.25,
    where: tuple[str, str] = SMALL_SLICE,
) -> tuple[str, str]:
    """One simulated registration: (alias, reason) of `paired_gate`. `gain` is the challenger's
    recall gain everywhere, or "slice" for +0.05 everywhere but `loss` on the slice `where`."""
    rng = np.random.default_rng(seed)
    dev = isic_dev(rng, n_images)
    champion = model_probs(rng, dev)
    shift = slice_loss(dev, loss, 0.05, where) if gain == "slice" else float(gain)
    challenger = with_probs(dev, model_probs(rng, dev, shift))
    c = compare(challenger, champion, CLASSES, champion_version="1", dataset="sim",
                n_resamples=n_resamples, seed=seed)  # fmt: skip
    return paired_gate(c, 0.0, max_slice_drop)


def blocked_by_slice(reason: str) -> bool:
    """Whether `paired_gate`'s reason is a slice's evidence (not the overall difference)."""
    return reason.split(": ", 1)[-1].startswith("balanced accuracy on slice")


def rows(ctx: Context) -> list[Rate]:
    trials, n = ctx.pick(40, 400), 2500
    arms = {"null": 0.0, "better": 0.05, "uniform": 0.11, "old": "slice", "small": "slice"}
    where = {"old": OLD_SLICE, "small": SMALL_SLICE}
    out = {
        arm: [gate_trial(10_000 * k + s, n, gain, where=where.get(arm, SMALL_SLICE))
              for s in range(trials)]
        for k, (arm, gain) in enumerate(arms.items())
    }  # fmt: skip
    promoted = {arm: sum(a == CHAMPION for a, _ in res) for arm, res in out.items()}
    blocked = {arm: sum(blocked_by_slice(r) for _, r in res) for arm, res in out.items()}
    note = f"ISIC-shaped dev of {n} images, 1-3 photos per lesion, 18 slices"
    return [
        at_most("gate false promotion (one run, no true difference)", 0.05, promoted["null"],
                trials, f"{note}; the 95 % interval's lower bound: 0.025 nominal"),
        reported("gate power at +0.05 balanced accuracy", promoted["better"], trials,
                 f"{note}; recall +0.05 in every class, errors correlated 0.5 with the champion's"),
        at_most("slice false block (uniformly better by +0.11)", 0.05, blocked["uniform"],
                trials, note),
        at_most("slice false block (no true difference)", 0.05, blocked["null"], trials, note),
        at_least("slice detection (loses 0.25 on a slice of ~200 images)", 0.8, blocked["old"],
                 trials, f"{note}; ages 80-99, +0.05 elsewhere"),
        at_least("slice detection (loses 0.25 on a slice of ~120 images)", 0.8, blocked["small"],
                 trials, f"{note}; palms/soles, +0.05 elsewhere"),
    ]  # fmt: skip


def reported(decision: str, hits: int, trials: int, note: str) -> Rate:
    """A measured rate with no promise, reported beside the promised ones."""
    low, high = wilson(hits, trials)
    return Rate(decision, "reported", hits / trials, low, high, trials, True, note)
