"""skin.data.balance: the majority class in train cut to the next class's size, as a seeded keep-flag."""

from __future__ import annotations

import pandas as pd
import pytest

from skin.data.balance import BalanceError, undersample


def manifest(
    train: dict[str, int], dev: dict[str, int] | None = None, first: int = 0
) -> pd.DataFrame:
    """Rows per (split, label); keys are unique and numbered from `first`."""
    rows = []
    for split, counts in (("train", train), ("dev", dev or {}), ("test", dev or {})):
        for label, n in counts.items():
            rows += [{"split": split, "label": label} for _ in range(n)]
    df = pd.DataFrame(rows)
    df["key"] = [f"{r.label}/img_{first + i:05d}.jpg" for i, r in enumerate(df.itertuples())]
    return df


def kept(m: pd.DataFrame, split: str = "train") -> dict[str, int]:
    return m[(m["split"] == split) & m["keep"]].groupby("label").size().to_dict()


def test_nv_in_train_is_cut_to_mels_size_and_nothing_else_moves() -> None:
    df = manifest({"NV": 60, "MEL": 15, "BCC": 9}, dev={"NV": 12, "MEL": 3})
    m = undersample(df, "undersample", "NV", seed=0)
    assert kept(m) == {"NV": 15, "MEL": 15, "BCC": 9}, kept(m)
    assert m.loc[m["split"] != "train", "keep"].all(), "dev and test keep their natural counts"
    assert m.drop(columns="keep").equals(df), "only the keep flag is set; rows stay as they were"
    assert "keep" not in df.columns, "the input manifest is not changed"


def test_the_named_majority_is_cut_even_when_another_class_is_larger() -> None:
    df = manifest({"NV": 30, "MEL": 50, "BCC": 10})
    assert kept(undersample(df, majority_class="NV", seed=1)) == {"NV": 30, "MEL": 50, "BCC": 10}
    m = undersample(df, majority_class="MEL", seed=1)
    assert kept(m) == {"NV": 30, "MEL": 30, "BCC": 10}, "MEL is cut to the next-largest, NV"


def test_the_kept_set_is_a_function_of_keys_and_seed_not_of_row_order() -> None:
    df = manifest({"NV": 80, "MEL": 10})
    a = undersample(df, seed=5)
    shuffled = df.sample(frac=1.0, random_state=11)
    b = undersample(shuffled, seed=5)
    assert set(a.loc[a["keep"], "key"]) == set(b.loc[b["keep"], "key"]), "row order moved the set"
    assert undersample(df, seed=5)["keep"].equals(a["keep"]), "same seed, same set"
    c = undersample(df, seed=6)
    assert set(a.loc[a["keep"], "key"]) != set(c.loc[c["keep"], "key"]), "another seed, another"


def test_more_nv_images_never_bring_back_an_image_dropped_before() -> None:
    """Stable as data grows: among the old images, the grown data set keeps a subset."""
    old = manifest({"NV": 40, "MEL": 10})
    grown = pd.concat([old, manifest({"NV": 40}, first=1000)], ignore_index=True)
    before = undersample(old, seed=2)
    after = undersample(grown, seed=2)
    kept_before = set(before.loc[before["keep"], "key"])
    kept_after_old = set(after.loc[after["keep"], "key"]) & set(old["key"])
    assert kept_after_old <= kept_before, sorted(kept_after_old - kept_before)


def test_a_non_default_index_flags_the_right_rows() -> None:
    df = manifest({"NV": 20, "MEL": 4}, dev={"NV": 5})
    df.index = [f"row{i}" for i in range(len(df))][::-1]
    m = undersample(df, seed=3)
    assert kept(m) == {"NV": 4, "MEL": 4} and m.loc[m["split"] == "dev", "keep"].all()


def test_an_existing_keep_column_is_reset_not_merged() -> None:
    df = manifest({"NV": 5, "MEL": 5}).assign(keep=False)
    assert undersample(df, seed=0)["keep"].all(), "a stale keep flag must not survive"
    assert undersample(df, "none")["keep"].all()


@pytest.mark.parametrize(
    "train",
    [{"NV": 10}, {"NV": 5, "MEL": 5}, {"NV": 3, "MEL": 7}],
    ids=["one-class", "tie", "already-smaller"],
)
def test_nothing_is_dropped_when_the_majority_is_not_larger(train: dict[str, int]) -> None:
    assert undersample(manifest(train), seed=0)["keep"].all()


def test_strategy_none_keeps_every_row() -> None:
    m = undersample(manifest({"NV": 50, "MEL": 2}), "none")
    assert m["keep"].all() and len(m) == 52


def test_unknown_strategies_and_absent_classes_are_refused_by_name() -> None:
    df = manifest({"NV": 10, "MEL": 2}, dev={"VASC": 3})
    with pytest.raises(BalanceError, match="unknown balance strategy 'oversample'"):
        undersample(df, "oversample")
    with pytest.raises(
        BalanceError, match=r"majority class 'VASC' has no train images.*'MEL', 'NV'"
    ):
        undersample(df, majority_class="VASC")
