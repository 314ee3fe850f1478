"""Leaks against a manifest: pairs across its splits, and a run's metrics without them."""

from __future__ import annotations

import numpy as np
import pandas as pd

from skin.data.leaks import cross_split_pairs, leak_effect, leaked_keys


def test_only_pairs_across_splits_of_listed_images_are_leaks() -> None:
    manifest = pd.DataFrame(
        {"key": ["a", "b", "c", "d"], "split": ["train", "test", "train", "dev"]}
    )
    pairs = pd.DataFrame(
        {"key_a": ["a", "a", "c", "x"], "key_b": ["b", "c", "d", "a"], "distance": [3, 4, 5, 6],
         "similarity": [0.99, 0.98, 0.97, 0.96], "rule": ["phash≤16"] * 4}
    )  # fmt: skip
    leaks = cross_split_pairs(manifest, pairs)
    assert leaks[["key_a", "key_b"]].values.tolist() == [["a", "b"], ["c", "d"]]
    assert leaked_keys(leaks, "test") == {"b"} and leaked_keys(leaks, "train") == {"a", "c"}


def test_leaked_test_images_that_a_model_got_right_make_the_metrics_optimistic() -> None:
    classes = ("MEL", "NV")
    rng = np.random.default_rng(0)
    n = 400
    label = rng.choice(classes, size=n)
    leaked = set(map(str, range(100)))
    right = np.where(np.arange(n) < 100, 1.0, rng.random(n) < 0.6)  # copies of train: memorised
    p_true = np.where(right == 1, 0.9, 0.1)
    probs = np.where(
        label[:, None] == np.array(classes)[None, :], p_true[:, None], 1 - p_true[:, None]
    )
    frame = pd.DataFrame({"key": map(str, range(n)), "label": label})
    frame[["prob_MEL", "prob_NV"]] = probs
    effect = leak_effect(frame, leaked, classes)
    assert effect.loc["balanced_accuracy", "change"] < -0.05, effect
    assert effect.loc["balanced_accuracy", "images_without"] == 300
