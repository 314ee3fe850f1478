"""skin.data.manifest: the schema enforced on every write and read, round trips, the content hash."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from skin.data import manifest as mf


def good() -> pd.DataFrame:
    """A valid manifest: two images per split, one train image not kept, lesions within a split."""
    return pd.DataFrame(
        {
            "key": [f"{c}/ISIC_{i:07d}.jpg" for i, c in enumerate("MNMNMN")],
            "label": ["MEL", "NV", "MEL", "NV", "MEL", "NV"],
            "split": ["train", "train", "dev", "dev", "test", "test"],
            "keep": [True, False, True, True, True, True],
            "fingerprint": [f"{i:x}".rjust(32, "e") for i in range(6)],  # MD5-like hex
            "source": "s3://bucket/isic",
            "lesion_id": pd.array(["HAM_1", "HAM_1", "HAM_2", None, "", "HAM_3"], dtype="string"),
        }
    )


def test_a_valid_manifest_passes() -> None:
    mf.validate(good())


@pytest.mark.parametrize("column", mf.REQUIRED)
def test_a_missing_required_column_is_named(column: str) -> None:
    with pytest.raises(mf.ManifestError, match=rf"lacks columns \['{column}'\]"):
        mf.validate(good().drop(columns=column))


def test_a_key_listed_twice_is_refused_even_in_two_splits() -> None:
    df = good()
    df.loc[2, "key"] = df.loc[0, "key"]  # the same image in train and dev
    with pytest.raises(mf.ManifestError, match=r"1 duplicate keys, e.g. 'M/ISIC_0000000.jpg'"):
        mf.validate(df)


def test_unknown_labels_and_splits_are_named_with_the_known_ones() -> None:
    with pytest.raises(mf.ManifestError, match=r"unknown labels \['UNK'\]; known: \['AK'"):
        mf.validate(good().assign(label=["MEL", "UNK", "MEL", "NV", "MEL", "NV"]))
    with pytest.raises(mf.ManifestError, match=r"unknown splits \['val'\]; known: \['train'"):
        mf.validate(good().assign(split=["train", "train", "val", "dev", "test", "test"]))


def test_the_known_classes_can_be_narrowed() -> None:
    mf.validate(good(), classes=("MEL", "NV"))
    with pytest.raises(mf.ManifestError, match=r"unknown labels \['NV'\]"):
        mf.validate(good(), classes=["MEL"])


def test_only_train_rows_may_be_dropped_by_undersampling() -> None:
    df = good()
    df.loc[4, "keep"] = False
    with pytest.raises(mf.ManifestError, match="1 rows outside train have keep=False"):
        mf.validate(df)


@pytest.mark.parametrize(
    ("column", "what"), [("fingerprint", "identical files"), ("lesion_id", "images of one lesion")]
)
def test_a_group_that_straddles_splits_is_leakage(column: str, what: str) -> None:
    df = good()
    df.loc[3, column] = df.loc[0, column]  # a train image's twin (or lesion) in dev
    with pytest.raises(mf.ManifestError, match=rf"1 groups of {what} straddle splits \(leakage\)"):
        mf.validate(df)


def test_unknown_lesions_never_group_images() -> None:
    df = good()
    df["lesion_id"] = pd.array([None, "", None, "", None, ""], dtype="string")
    mf.validate(df)  # missing and empty ids are not one lesion across splits
    mf.validate(df.drop(columns="lesion_id"))  # and the column is optional


@pytest.mark.parametrize("name", ["m.parquet", "m.csv"])
def test_a_manifest_round_trips_with_its_types_and_hash(tmp_path: Path, name: str) -> None:
    df = good()
    uri = str(tmp_path / name)
    digest = mf.write(df, uri)
    back = mf.read(uri)
    assert back["keep"].dtype == bool and back["keep"].tolist() == df["keep"].tolist(), name
    assert back["lesion_id"].fillna("").tolist() == df["lesion_id"].fillna("").tolist(), name
    assert digest == mf.manifest_hash(df) == mf.manifest_hash(back), f"{name} changed the version"


def test_an_invalid_manifest_is_never_written(tmp_path: Path) -> None:
    uri = tmp_path / "m.parquet"
    with pytest.raises(mf.ManifestError, match="duplicate keys"):
        mf.write(good().assign(key="same.jpg"), str(uri))
    assert not uri.exists(), "the schema is checked before anything is written"


def test_reading_checks_the_schema_and_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(mf.ManifestError, match=r"manifest not found: .*absent\.parquet"):
        mf.read(str(tmp_path / "absent.parquet"))
    bad = good().assign(label="XYZ")
    bad.to_parquet(tmp_path / "edited.parquet", index=False)  # edited by hand, past `write`
    with pytest.raises(mf.ManifestError, match="unknown labels"):
        mf.read(str(tmp_path / "edited.parquet"))


@pytest.mark.parametrize("keep", ["1", "true", "TRUE", "True"])
def test_csv_keep_flags_read_as_booleans(tmp_path: Path, keep: str) -> None:
    df = good().drop(columns="lesion_id")
    text = df.assign(keep=[keep, "0", keep, keep, keep, keep]).to_csv(index=False)
    (tmp_path / "m.csv").write_text(text)
    assert mf.read(str(tmp_path / "m.csv"))["keep"].tolist() == [True, False, *[True] * 4]


def test_the_hash_is_the_content_not_the_order_or_the_source() -> None:
    df = good()
    h = mf.manifest_hash(df)
    assert len(h) == 16 and int(h, 16) >= 0, h
    shuffled = df.sample(frac=1.0, random_state=0)[df.columns[::-1]]
    assert mf.manifest_hash(shuffled) == h, "row and column order are not content"
    assert mf.manifest_hash(df.assign(source="/elsewhere")) == h, "a moved copy is the same data"
    assert mf.manifest_hash(df.assign(lesion_id=None)) == h, "metadata is not in the version"
    assert mf.manifest_hash(df.assign(keep=df["keep"].astype(int))) == h, "1/0 keep is bool"


@pytest.mark.parametrize(
    ("column", "row", "value"),
    [
        ("key", 0, "M/other.jpg"),
        ("label", 0, "NV"),
        ("split", 0, "dev"),
        ("keep", 1, True),
        ("fingerprint", 0, "f" * 32),
    ],
)
def test_the_hash_moves_with_every_hashed_column(column: str, row: int, value: Any) -> None:
    df = good()
    edited = df.copy()
    edited.loc[row, column] = value
    assert mf.manifest_hash(edited) != mf.manifest_hash(df), f"{column} is part of the version"


def test_frame_hash_is_order_free_for_any_table() -> None:
    t = pd.DataFrame({"a": [3, 1, 2], "b": ["x", "y", "z"]})
    assert mf.frame_hash(t) == mf.frame_hash(t.iloc[[2, 0, 1]])
    assert mf.frame_hash(t) != mf.frame_hash(t.assign(b=["x", "y", "w"]))


def test_summary_counts_each_split_and_what_train_keeps() -> None:
    s = mf.summary(good())
    assert list(s.columns) == ["train", "train_kept", "dev", "test"]
    assert s.loc["MEL"].tolist() == [1, 1, 1, 1] and s.loc["NV"].tolist() == [1, 0, 1, 1]
    assert s.loc["total"].tolist() == [2, 1, 2, 2], "a total row sums the classes"
