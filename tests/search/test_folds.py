"""Cross-validation folds: grouped by lesion and duplicate, stratified, test untouched, seeded."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skin.data.manifest import validate
from skin.data.split import split_with_moves
from skin.search.folds import FoldError, assign_folds, fold_manifest


def make_manifest(counts: dict[str, int], lesion_every: int, dup_every: int, seed: int):
    """A split manifest: runs of `lesion_every` images share a lesion, every `dup_every`-th image
    is a byte copy of the one before it (same fingerprint, maybe another lesion id)."""
    rows, i = [], 0
    for label, n in counts.items():
        for _ in range(n):
            fp = f"f{i - 1}" if dup_every and i % dup_every == 0 and i else f"f{i}"
            rows.append(
                {
                    "key": f"{label}/ISIC_{i:07d}.jpg",
                    "label": label,
                    "fingerprint": fp,
                    "lesion_id": f"L{label}{i // lesion_every}" if lesion_every else None,
                    "source": "/data",
                }
            )
            i += 1
    df = pd.DataFrame(rows)
    df["split"] = split_with_moves(df, (0.7, 0.15, 0.15), seed).split.to_numpy()
    df["keep"] = True
    return df


COUNTS = {"MEL": 40, "NV": 120, "BCC": 30, "DF": 18}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    k=st.integers(2, 5),
    seed=st.integers(0, 10_000),
    lesion_every=st.sampled_from([0, 1, 2, 3]),
    dup_every=st.sampled_from([0, 7, 11]),
)
def test_folds_share_no_group_never_touch_dev_or_test_and_cover_train_once(
    k: int, seed: int, lesion_every: int, dup_every: int
) -> None:
    """Folds are dealt over train only: dev is left to what the fold models become (an
    ensemble's temperature, thresholds and gate need images none of its members trained on)."""
    m = make_manifest(COUNTS, lesion_every, dup_every, seed)
    folds = assign_folds(m, k, seed)
    pool = m["split"].eq("train")
    assert (folds[~pool] == -1).all(), "dev and test rows are in no fold"
    assert set(folds[pool]) == set(range(k)), "every fold has rows; train in exactly one"
    for column in ("lesion_id", "fingerprint"):
        known = m[pool & m[column].notna()]
        per_group = folds[known.index].groupby(known[column]).nunique()
        assert (per_group == 1).all(), f"a {column} group straddles folds"
    dev_keys = set(m.loc[m["split"] == "dev", "key"])
    for f in range(k):
        fm = fold_manifest(m, folds, f, seed=seed)
        validate(fm)  # no leakage between the fold's train, dev and test
        assert not dev_keys & set(fm["key"]), "the manifest's dev is in no fold manifest"
        test = m[m["split"] == "test"]
        assert fm.loc[fm["split"] == "test", "key"].tolist() == test["key"].tolist()
        assert set(fm.loc[fm["key"].isin(m.loc[folds == f, "key"]), "split"]) == {"dev"}
        assert not fm.loc[fm["split"] != "train", "keep"].eq(False).any(), "dev and test kept"


def test_class_proportions_per_fold_stay_near_the_overall_ones() -> None:
    larger = {c: n * 6 // 5 for c, n in COUNTS.items()}  # a train pool of ~175 images to deal
    m = make_manifest(larger, lesion_every=2, dup_every=0, seed=3)
    folds = assign_folds(m, 5, seed=3)
    pool = folds >= 0
    overall = m.loc[pool, "label"].value_counts(normalize=True)
    for f in range(5):
        share = m.loc[folds == f, "label"].value_counts(normalize=True)
        gap = (share.reindex(overall.index, fill_value=0) - overall).abs().max()
        assert gap < 0.05, f"fold {f} proportions {share.to_dict()} vs {overall.to_dict()}"
    sizes = folds[pool].value_counts()
    assert sizes.max() - sizes.min() <= 4, f"fold sizes uneven: {sizes.to_dict()}"


def test_folds_are_deterministic_for_a_seed_and_independent_of_row_order() -> None:
    m = make_manifest(COUNTS, lesion_every=2, dup_every=7, seed=1)
    a = assign_folds(m, 4, seed=9)
    shuffled = m.sample(frac=1, random_state=0)
    b = assign_folds(shuffled, 4, seed=9)
    assert a.equals(b.reindex(a.index)), "row order changed the folds"
    c = assign_folds(m, 4, seed=10)
    assert not a.equals(c), "another seed deals other folds"


def test_fold_training_part_is_undersampled_by_the_pipeline_rule() -> None:
    m = make_manifest(COUNTS, lesion_every=1, dup_every=0, seed=2)
    folds = assign_folds(m, 3, seed=2)
    fm = fold_manifest(m, folds, 0, seed=2)
    kept = fm[(fm["split"] == "train") & fm["keep"]]["label"].value_counts()
    assert kept["NV"] == kept.drop("NV").max(), f"NV cut to the next class: {kept.to_dict()}"
    none = fold_manifest(m, folds, 0, balance="none")
    assert none["keep"].all()


def test_too_many_folds_for_the_groups_is_a_clear_error() -> None:
    m = make_manifest({"MEL": 6, "NV": 6}, lesion_every=2, dup_every=0, seed=0)
    with pytest.raises(FoldError, match="fewer folds"):
        assign_folds(m, 5)
    with pytest.raises(FoldError, match="at least 2"):
        assign_folds(m, 1)
    folds = assign_folds(make_manifest(COUNTS, 1, 0, 0), 2)
    with pytest.raises(FoldError, match="fold 7"):
        fold_manifest(make_manifest(COUNTS, 1, 0, 0), folds, 7)
    assert np.isin(folds, [-1, 0, 1]).all()


def test_oof_metrics_pool_every_fold_and_average_the_fold_scores() -> None:
    from sklearn.metrics import balanced_accuracy_score

    from skin.search.folds import cv_metrics, out_of_fold

    m = make_manifest(COUNTS, lesion_every=2, dup_every=0, seed=4)
    folds = assign_folds(m, 3, seed=4)
    classes = sorted(COUNTS)
    rng = np.random.default_rng(0)
    frames = []
    for f in range(3):
        rows = m[folds == f][["key", "label"]].reset_index(drop=True)
        p = rng.dirichlet(np.ones(len(classes)), len(rows))
        frames.append(
            pd.concat([rows, pd.DataFrame(p, columns=[f"prob_{c}" for c in classes])], axis=1)
        )
    oof = out_of_fold(frames, ["r0", "r1", "r2"], m)
    assert len(oof) == (folds >= 0).sum() and set(oof["manifest_split"]) == {"train"}
    table = pd.DataFrame(
        {"dev_balanced_accuracy": [0.5, 0.6, 0.7], "dev_accuracy": [0.4, 0.5, 0.6]}
    )
    got = cv_metrics(table, oof, classes)
    assert got["cv_balanced_accuracy_mean"] == pytest.approx(0.6)
    assert got["cv_balanced_accuracy_std"] == pytest.approx(0.1)
    y = oof["label"].map({c: i for i, c in enumerate(classes)})
    pred = oof[[f"prob_{c}" for c in classes]].to_numpy().argmax(1)
    assert got["cv_oof_balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    with pytest.raises(FoldError, match="two folds"):
        out_of_fold([frames[0], frames[0]], ["a", "b"], m)
