"""Near-duplicates across an existing manifest's splits ("would have leaked"), and how much a
run's held-out metrics move when the leaked images are left out."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from skin.stats.metrics import split_metrics

LEAK_COLUMNS = ["key_a", "split_a", "key_b", "split_b", "distance", "similarity", "rule"]


def cross_split_pairs(manifest: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """The audit's pairs whose two images sit in different splits of `manifest`."""
    split_of = manifest.set_index("key")["split"]
    out = pairs.assign(split_a=pairs["key_a"].map(split_of), split_b=pairs["key_b"].map(split_of))
    out = out[out["split_a"].notna() & out["split_b"].notna() & (out["split_a"] != out["split_b"])]
    return out.reindex(columns=LEAK_COLUMNS).reset_index(drop=True)


def leaked_keys(leaks: pd.DataFrame, split: str) -> set[str]:
    """Images of `split` with a near-duplicate in another split (the ones that inflate scores)."""
    return set(leaks.loc[leaks["split_a"] == split, "key_a"]) | set(
        leaks.loc[leaks["split_b"] == split, "key_b"]
    )


EFFECT_METRICS = ("balanced_accuracy", "accuracy", "macro_f1", "macro_auc", "log_loss")


def leak_effect(
    predictions: pd.DataFrame, leaked: set[str], classes: Sequence[str]
) -> pd.DataFrame:
    """A split's metrics on all its images and without the leaked ones (rows: metric; columns:
    all, without_leaks, change, images_all, images_without)."""
    known = predictions[predictions["label"].isin(classes)]
    index = {c: i for i, c in enumerate(classes)}
    rows = []
    clean = known[~known["key"].isin(leaked)]
    scored = {}
    for name, frame in (("all", known), ("without_leaks", clean)):
        y = frame["label"].map(index).to_numpy(dtype=np.int64)
        probs = frame[[f"prob_{c}" for c in classes]].to_numpy(dtype=np.float64)
        probs = probs / probs.sum(axis=1, keepdims=True)
        scored[name] = split_metrics(y, probs, classes).scalars if len(frame) else {}
    for metric in EFFECT_METRICS:
        a = scored["all"].get(metric, np.nan)
        b = scored["without_leaks"].get(metric, np.nan)
        rows.append({"metric": metric, "all": a, "without_leaks": b, "change": b - a})
    out = pd.DataFrame(rows).set_index("metric")
    out["images_all"], out["images_without"] = len(known), len(clean)
    return out
