"""Drift: false alarms at 1 and 3 photos per lesion, and power at a 0.8 SD shift, by skin.monitor.drift.judge.

Each trial draws an ISIC-shaped reference (ISIC 2019's class mix, 25k images in lesions of k photos)
and a batch of new lesions from the same world (or with one property moved), samples both sides as
check-drift does (`sample_rows`, `drift.sample` images per side), gives every sampled photo its
lesion's properties and embedding plus a little photo noise, and asks `judge` for the verdict.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits  # scikit-learn's dependency

from benchmarks.common import Context
from benchmarks.decision_rates import Rate, at_least, at_most
from skin.base.labels import ISIC2019_COUNTS
from skin.monitor.drift import PROPERTIES, DriftParams, DriftReport, Side, judge, sample_rows

PHOTO_NOISE = 0.3  # SD of a photo around its lesion (the lesion's spread is 1): small
SIZES = np.array([[600, 450], [1024, 768], [1024, 1024], [2048, 1536]])  # cameras, per lesion
SHIFT = 0.8  # the power row's move of one property, in SDs of that property over photos
SHIFTED = "red"


Photos = int | tuple[int, int]  # photos per lesion: exactly k, or drawn from [low, high]


def lesion_rows(rng: np.random.Generator, images: int, photos: Photos, prefix: str) -> pd.DataFrame:
    """About `images` photos of lesions of ISIC 2019's class mix, `photos` per lesion: key,
    label, lesion_id."""
    low, high = (photos, photos) if isinstance(photos, int) else photos
    lesions = max(round(2 * images / (low + high)), 1)
    classes = list(ISIC2019_COUNTS)
    mix = np.array(list(ISIC2019_COUNTS.values()), dtype=float)
    labels = rng.choice(classes, size=lesions, p=mix / mix.sum())
    lesion = np.repeat(np.arange(lesions), rng.integers(low, high + 1, lesions))
    return pd.DataFrame(
        {
            "key": [f"{prefix}{i}" for i in range(len(lesion))],
            "label": labels[lesion],
            "lesion_id": [f"{prefix}L{i}" for i in lesion],
        }
    )


def observe(
    rng: np.random.Generator, rows: pd.DataFrame, centres: dict[str, np.ndarray], shift: float
) -> tuple[pd.DataFrame, np.ndarray]:
    """Properties and embeddings of sampled photos: the lesion's own values (shared by its
    photos, embeddings around its class centre) plus photo noise; `shift` SDs added to SHIFTED."""
    lesions, photo_lesion = np.unique(rows["lesion_id"], return_inverse=True)
    n, dims = len(lesions), len(next(iter(centres.values())))
    lesion_props = rng.normal(size=(n, len(PROPERTIES)))
    lesion_class = rows.groupby("lesion_id")["label"].first().reindex(lesions)
    lesion_emb = np.stack([centres[c] for c in lesion_class]) + rng.normal(size=(n, dims))
    props = lesion_props[photo_lesion] + rng.normal(0, PHOTO_NOISE, (len(rows), len(PROPERTIES)))
    frame = pd.DataFrame(props, columns=list(PROPERTIES))
    frame[["width", "height"]] = SIZES[rng.integers(0, len(SIZES), n)][photo_lesion]
    frame[SHIFTED] += shift * np.sqrt(1 + PHOTO_NOISE**2)
    frame["lesion_id"] = rows["lesion_id"].to_numpy()
    emb = lesion_emb[photo_lesion] + rng.normal(0, PHOTO_NOISE, (len(rows), dims))
    return frame, emb


def simulate(
    rng: np.random.Generator,
    params: DriftParams,
    *,
    photos: Photos,
    current_images: int,
    current_photos: Photos | None = None,
    reference_images: int = sum(ISIC2019_COUNTS.values()),
    shift: float = 0.0,
    dims: int = 16,
    lesion_ids: bool = True,
) -> tuple[Side, Side]:
    """One trial's reference and current sides, sampled as check_drift samples them (the current
    batch at `current_photos` per lesion when given); without `lesion_ids` the current batch
    carries none (a batch from the field)."""
    centres = {c: rng.normal(size=dims) for c in ISIC2019_COUNTS}
    reference = lesion_rows(rng, reference_images, photos, "r")
    current = lesion_rows(rng, current_images, current_photos or photos, "c")
    sides = []
    for rows, seed, moved in ((reference, params.seed, 0.0), (current, params.seed + 1, shift)):
        props, emb = observe(rng, sample_rows(rows, params.sample, seed), centres, moved)
        sides.append(Side(rows, props, emb))
    if not lesion_ids:  # the field batch names no lesions: drop what the world knows
        rows, props, emb = sides[1].rows, sides[1].props, sides[1].embeddings
        sides[1] = Side(rows.drop(columns="lesion_id"), props.drop(columns="lesion_id"), emb)
    return sides[0], sides[1]


def reports(
    rng: np.random.Generator, params: DriftParams, trials: int, **world: Any
) -> list[DriftReport]:
    """`judge`'s report on each of `trials` simulated trials of one world. BLAS runs on one
    thread: a trial's matrices are small, and threads fighting over busy cores cost 4x."""
    with threadpool_limits(1, user_api="blas"):
        return [judge(*simulate(rng, params, **world), params) for _ in range(trials)]


def alarm_rate(
    rng: np.random.Generator, params: DriftParams, trials: int, **world: Any
) -> tuple[int, int]:
    """(drift verdicts, trials) of `judge` over `trials` simulated trials of one world."""
    return sum(r.drifted for r in reports(rng, params, trials, **world)), trials


def rows(ctx: Context) -> list[Rate]:
    params = DriftParams()  # the pipeline's defaults: sample 300, alpha 0.01, 2000 permutations
    trials = ctx.pick(60, 400)
    rng = np.random.default_rng(21)
    batch = params.sample  # a batch of new images as large as the sample: all of it tested
    out = []
    for photos in (1, 3):
        hits, n = alarm_rate(rng, params, trials, photos=photos, current_images=batch)
        out.append(
            at_most(
                f"drift false alarm, {photos} photo(s) per lesion",
                params.alpha,
                hits,
                n,
                f"ISIC-shaped reference, batch of {batch} images, Holm over all checks",
            )
        )
    hits, n = alarm_rate(rng, params, trials, photos=3, current_images=batch, shift=SHIFT)
    note = f"{SHIFTED} moved {SHIFT} SD; batch of {batch} images at 3 photos per lesion"
    out.append(at_least(f"drift power at a {SHIFT} SD shift", 0.80, hits, n, note))
    return out
