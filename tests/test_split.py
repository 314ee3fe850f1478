"""Splitting and undersampling as pure functions: sizes, determinism, growth, leakage, errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from skin.balance import BalanceError, undersample
from skin.labels import ISIC2019_COUNTS
from skin.manifest import ManifestError, validate
from skin.split import SplitError, assign_splits, split_report


def make_images(counts: dict[str, int], start: int = 0, lesion_every: int = 0) -> pd.DataFrame:
    """Rows like a listing; with lesion_every=k, runs of k consecutive images share a lesion."""
    rows = []
    i = start
    for label, n in counts.items():
        for _ in range(n):
            lesion = f"L{label}{i // lesion_every}" if lesion_every else None
            rows.append({"key": f"{label}/ISIC_{i:07d}.jpg", "label": label, "fingerprint": f"f{i}",
                         "lesion_id": lesion})
            i += 1
    return pd.DataFrame(rows)


def with_split(df: pd.DataFrame, **kwargs) -> pd.DataFrame:
    out = df.copy()
    out["split"] = assign_splits(out, **kwargs).to_numpy()
    return out


@pytest.fixture(scope="module")
def isic() -> pd.DataFrame:
    return with_split(make_images(ISIC2019_COUNTS))


def test_isic_counts_hit_every_class_within_one_image(isic: pd.DataFrame) -> None:
    report = split_report(isic, (0.8, 0.1, 0.1))
    for label, n in ISIC2019_COUNTS.items():
        row = report.loc[label]
        assert row[["train", "dev", "test"]].sum() == n, f"{label}: images lost or duplicated"
        for split in ("dev", "test"):
            assert abs(row[split] - 0.1 * n) <= 1, f"{label} {split}: {row[split]} vs 10% of {n}"
        assert row["dev"] == row["dev_target"] and row["test"] == row["test_target"], row


def test_undersampling_on_isic_counts_matches_the_notebook(isic: pd.DataFrame) -> None:
    m = undersample(isic, "undersample", "NV", seed=1)
    kept = m[(m["split"] == "train") & m["keep"]].groupby("label").size()
    train = isic[isic["split"] == "train"].groupby("label").size()
    assert kept["NV"] == train["MEL"], f"NV kept {kept['NV']} should equal MEL's {train['MEL']}"
    assert kept.drop("NV").equals(train.drop("NV")), "only NV may be undersampled"
    assert m[m["split"] != "train"]["keep"].all(), "dev/test must keep their natural distribution"
    validate(m.assign(source="x"))
    none = undersample(isic, "none")
    assert none["keep"].all(), "strategy none keeps everything"


def test_undersampling_defaults_to_the_largest_class_and_is_seeded() -> None:
    df = with_split(make_images({"AK": 300, "BCC": 100, "NV": 20}))
    m = undersample(df, majority_class=None, seed=3)
    kept = m[(m["split"] == "train") & m["keep"]].groupby("label").size()
    assert kept["AK"] == kept["BCC"], f"largest class cut to the second: {kept.to_dict()}"
    again = undersample(df, majority_class=None, seed=3)
    other = undersample(df, majority_class=None, seed=4)
    assert m["keep"].equals(again["keep"]), "same seed, same kept set"
    assert not m["keep"].equals(other["keep"]), "another seed, another kept set"
    with pytest.raises(BalanceError, match="VASC"):
        undersample(df, majority_class="VASC")


def test_split_is_deterministic_for_a_seed() -> None:
    df = make_images({"AK": 120, "NV": 400, "MEL": 150}, lesion_every=3)
    a, b = with_split(df, seed=7), with_split(df, seed=7)
    c = with_split(df, seed=8)
    assert a["split"].equals(b["split"]), "same seed must give the same split"
    assert not a["split"].equals(c["split"]), "another seed must give another split"
    shuffled = df.sample(frac=1, random_state=0)
    d = with_split(shuffled, seed=7).set_index("key").loc[a["key"], "split"]
    assert (d.to_numpy() == a["split"].to_numpy()).all(), "row order must not change the split"


def test_growth_keeps_old_assignments_and_targets(isic: pd.DataFrame) -> None:
    added = make_images({k: v // 10 for k, v in ISIC2019_COUNTS.items()}, start=10**6)
    grown = with_split(
        pd.concat([isic.drop(columns="split"), added], ignore_index=True),
        previous=isic[["key", "split"]],
    )
    old = grown.set_index("key").loc[isic["key"], "split"]
    assert (old.to_numpy() == isic["split"].to_numpy()).all(), "assigned images must keep their split"
    report = split_report(grown, (0.8, 0.1, 0.1))
    for label, row in report.iterrows():
        for split in ("dev", "test"):
            assert abs(row[split] - row[f"{split}_target"]) <= 1, f"{label} {split} drifted: {row}"


def test_lesions_never_straddle_splits_and_sizes_stay_close() -> None:
    df = with_split(make_images({"AK": 200, "BCC": 300, "NV": 900}, lesion_every=4))
    per_lesion = df.groupby("lesion_id")["split"].nunique()
    assert (per_lesion == 1).all(), "all images of a lesion must share a split"
    report = split_report(df, (0.8, 0.1, 0.1))
    for label, row in report.iterrows():
        for split in ("dev", "test"):
            assert abs(row[split] - row[f"{split}_target"]) <= 4, f"{label}: {row.to_dict()}"
    validate(df.assign(keep=True, source="x"))


def test_new_image_of_a_known_lesion_follows_its_split() -> None:
    first = with_split(make_images({"AK": 50, "NV": 50}, lesion_every=5))
    lesion, split = first.iloc[0][["lesion_id", "split"]]
    newcomer = pd.DataFrame([{"key": "AK/new.jpg", "label": "AK", "fingerprint": "new",
                              "lesion_id": lesion}])
    grown = with_split(pd.concat([first.drop(columns="split"), newcomer], ignore_index=True),
                       previous=first[["key", "split"]])
    assert grown.set_index("key").loc["AK/new.jpg", "split"] == split, "a lesion must not straddle"


def test_identical_files_never_straddle_even_across_classes() -> None:
    df = make_images({"AK": 100, "NV": 100})
    # 30 byte-identical copies, 10 of them filed under another class (a real ISIC trap).
    for i in range(30):
        j = 100 + i if i < 10 else i + 40
        df.loc[j, "fingerprint"] = df.loc[i, "fingerprint"]
    out = with_split(df)
    assert (out.groupby("fingerprint")["split"].nunique() == 1).all(), "duplicates must share a split"
    broken = out.copy()
    broken.loc[broken["fingerprint"] == broken.loc[0, "fingerprint"], "split"] = ["train", "test"]
    with pytest.raises(ManifestError, match="straddle"):
        validate(broken.assign(keep=True, source="x"))


@pytest.mark.parametrize(
    ("counts", "kwargs", "match"),
    [
        ({"AK": 2, "NV": 50}, {}, "class AK is too small"),
        ({"AK": 50}, {"fractions": (0.8, 0.1, 0.2)}, "sum to 1"),
        ({"AK": 50}, {"fractions": (0.9, 0.1)}, "need 3 fractions"),
        ({}, {}, "empty"),
    ],
)
def test_split_errors_name_the_cause(counts: dict[str, int], kwargs: dict, match: str) -> None:
    df = make_images(counts) if counts else pd.DataFrame(columns=["key", "label", "fingerprint"])
    with pytest.raises(SplitError, match=match):
        assign_splits(df, **kwargs)


def test_one_lesion_class_cannot_be_split() -> None:
    df = make_images({"AK": 6, "NV": 60})
    df.loc[df["label"] == "AK", "lesion_id"] = "one-lesion"
    with pytest.raises(SplitError, match=r"AK is too small.*1 independent groups"):
        assign_splits(df)


def test_other_fractions_are_honoured() -> None:
    df = with_split(make_images({"AK": 200, "NV": 400}), fractions=(0.6, 0.2, 0.2))
    sizes = df.groupby("split").size()
    assert np.isclose(sizes["dev"] / 600, 0.2, atol=0.01), sizes.to_dict()
    assert np.isclose(sizes["train"] / 600, 0.6, atol=0.01), sizes.to_dict()
