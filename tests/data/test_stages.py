"""The data stages over references: dataset ids, listings, split keys, lineage, saved manifests."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from skin.base.config import SplitConfig
from skin.data import manifest as mf
from skin.data.listing import Listing, list_dataset
from skin.data.location import DatasetState
from skin.data.stages import (
    ManifestRef,
    build_manifest,
    dataset_id,
    latest_manifest,
    manifest_ref,
    previous_for,
    read_listing,
    save_listing,
    save_manifest,
    source_uri,
    split_key,
)
from skin.data.storage import open_store

COUNTS = {"AK": 6, "BCC": 6, "BKL": 6, "DF": 6, "MEL": 10, "NV": 40, "SCC": 6, "VASC": 6}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """86 generated 16 px images in class folders, plus two files the listing must skip."""
    from skin.data.sample_data import write_sample_dataset

    root = tmp_path_factory.mktemp("stages") / "data"
    write_sample_dataset(str(root), COUNTS, size=16, seed=3, threads=2)
    (root / "notes.txt").write_text("not an image")
    (root / "XYZ").mkdir()
    (root / "XYZ" / "a.jpg").write_bytes(next((root / "NV").glob("*.jpg")).read_bytes())
    return root


@pytest.fixture(scope="module")
def listing(data: Path) -> Listing:
    return list_dataset(open_store(str(data)), "folders")


@pytest.fixture(scope="module")
def manifest(listing: Listing, data: Path) -> pd.DataFrame:
    return build_manifest(listing, source_uri(str(data)), SplitConfig())


# --------------------------------------------------------------------------- names of a dataset


def test_dataset_id_is_stable_readable_and_tells_uris_apart() -> None:
    a = dataset_id("s3://bucket/isic-2019")
    assert a == dataset_id("s3://bucket/isic-2019"), "the same URI must give the same id"
    assert a == dataset_id("s3://bucket/isic-2019/"), "a trailing slash is the same dataset"
    assert "isic-2019" in a, f"the id should be readable (name the folder): {a}"
    assert re.fullmatch(r"[A-Za-z0-9-]+", a), f"the id must be one safe folder name: {a}"
    assert a != dataset_id("s3://bucket/isic-2020"), "different URIs must give different ids"
    assert a != dataset_id("s3://other/isic-2019"), "same folder in another bucket is another set"


def test_dataset_id_differs_when_only_the_long_prefix_differs() -> None:
    tail = "/" + "x" * 60  # the readable part keeps only the last 40 characters
    a, b = dataset_id(f"s3://one{tail}"), dataset_id(f"s3://two{tail}")
    assert a != b, f"ids must differ beyond the readable slug: {a} == {b}"
    assert len(a) <= 40 + 1 + 8, f"the id stays short: {a}"


def test_a_folder_has_one_id_given_relative_or_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "images").mkdir()
    monkeypatch.chdir(tmp_path)
    absolute = dataset_id(str(tmp_path / "images"))
    assert dataset_id("images") == absolute, "relative and absolute paths name one dataset"
    assert dataset_id("./images/") == absolute, "./ and a trailing slash name the same dataset"
    assert dataset_id("other") != absolute, "another folder is another dataset"


def test_source_uri_keeps_s3_and_makes_folders_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert source_uri("s3://bucket/isic/") == "s3://bucket/isic", "S3 as given, less the slash"
    assert source_uri("data") == str(tmp_path / "data"), "a relative folder is made absolute"
    assert source_uri("~/data") == str(tmp_path / "home" / "data"), "~ is expanded"


def test_a_file_uri_names_the_same_folder_as_its_path(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    assert source_uri(f"file://{folder}") == str(folder), "file:// must record the folder itself"
    assert dataset_id(f"file://{folder}") == dataset_id(str(folder)), "one folder, one dataset id"


# --------------------------------------------------------------------------- listings


def test_a_saved_listing_reads_back_unchanged(listing: Listing, data: Path, tmp_path: Path) -> None:
    work = str(tmp_path / "work")
    ref = save_listing(listing, DatasetState(work, str(data)))
    want_dir = tmp_path / "work" / "listings" / dataset_id(str(data))
    assert Path(ref.uri) == want_dir / f"{listing.fingerprint}.parquet", f"named by content: {ref}"
    pd.testing.assert_frame_equal(read_listing(ref.uri), listing.images, obj="listing read back")
    assert ref.fingerprint == listing.fingerprint, ref
    assert ref.layout == "folders", ref
    assert ref.images == sum(COUNTS.values()), f"every generated image listed: {ref.images}"
    assert ref.counts == COUNTS, f"counts per class: {ref.counts}"


def test_a_saved_listing_keeps_what_was_skipped_and_why(
    listing: Listing, data: Path, tmp_path: Path
) -> None:
    ref = save_listing(listing, DatasetState(str(tmp_path / "work"), str(data)))
    assert ref.skipped == {"not an image file": 1, "unknown class folder XYZ": 1}, ref.skipped
    skipped = pd.read_csv(Path(ref.uri).with_name(f"{ref.fingerprint}.skipped.csv"))
    rows = dict(zip(skipped["key"], skipped["reason"], strict=True))
    assert rows == {"notes.txt": "not an image file", "XYZ/a.jpg": "unknown class folder XYZ"}, (
        f"the skipped CSV names each file and its reason: {rows}"
    )


# --------------------------------------------------------------------------- split keys and lineage


@pytest.mark.parametrize(
    "change",
    [{"fractions": (0.7, 0.15, 0.15)}, {"seed": 7}, {"group_by_lesion": False}],
    ids=["fractions", "seed", "group_by_lesion"],
)
def test_split_key_changes_with_what_moves_rows(change: dict[str, object]) -> None:
    assert split_key(SplitConfig()) == split_key(SplitConfig()), "the key must be stable"
    assert split_key(SplitConfig(**change)) != split_key(SplitConfig()), f"{change} moves rows"


@pytest.mark.parametrize(
    "change", [{"balance": "none"}, {"majority_class": "MEL"}], ids=["balance", "majority_class"]
)
def test_split_key_ignores_balance_settings(change: dict[str, object]) -> None:
    assert split_key(SplitConfig(**change)) == split_key(SplitConfig()), (
        f"{change} only sets keep flags, not splits: the key must not change"
    )


def made(split: SplitConfig, fingerprint: str, previous: str | None = "m0") -> ManifestRef:
    """The latest manifest as lineage records it: made from `fingerprint` with `split`."""
    return ManifestRef(
        uri="work/m1.parquet",
        hash="h1",
        dataset="d",
        images=10,
        listing_fingerprint=fingerprint,
        previous_uri=previous,
        split_key=split_key(split),
    )


def test_previous_is_none_the_first_time_and_after_other_split_settings() -> None:
    split = SplitConfig()
    assert previous_for(None, "fp", split) is None, "no latest manifest: a fresh split"
    other = made(SplitConfig(seed=7), "fp")
    assert previous_for(other, "fp", split) is None, "other split settings: a fresh split"
    unknown = ManifestRef(uri="u", hash="h", dataset="d", images=1, listing_fingerprint="fp")
    assert previous_for(unknown, "fp", split) is None, "no recorded split key: a fresh split"


def test_previous_stays_the_same_when_the_listing_did_not_change() -> None:
    split = SplitConfig(balance="none")  # balance does not count
    assert previous_for(made(SplitConfig(), "fp", "m0"), "fp", split) == "m0", (
        "same listing: split against the same previous as last time (so the result is reused)"
    )
    assert previous_for(made(SplitConfig(), "fp", None), "fp", split) is None, (
        "same listing, first manifest: still no previous"
    )


def test_previous_is_the_latest_when_the_listing_grew() -> None:
    latest = made(SplitConfig(), "fp-old", "m0")
    assert previous_for(latest, "fp-new", SplitConfig()) == latest.uri, (
        "new images: stay stable against the latest manifest"
    )


# --------------------------------------------------------------------------- building manifests


def test_every_listed_image_appears_once(manifest: pd.DataFrame, listing: Listing) -> None:
    assert not manifest["key"].duplicated().any(), "a key appears twice"
    assert set(manifest["key"]) == set(listing.images["key"]), "images lost or invented"
    assert len(manifest) == sum(COUNTS.values()), f"{len(manifest)} rows"
    assert set(manifest["split"]) == set(mf.SPLITS), f"all splits used: {set(manifest['split'])}"
    mf.validate(manifest)


def test_no_lesion_straddles_two_splits(manifest: pd.DataFrame) -> None:
    per_lesion = manifest.groupby("lesion_id")["split"]
    assert (per_lesion.size() > 1).any(), "the data should have repeat photos of some lesion"
    straddling = per_lesion.nunique()
    assert (straddling == 1).all(), f"lesions in two splits: {straddling[straddling > 1]}"


def test_nv_is_undersampled_in_train_only(manifest: pd.DataFrame) -> None:
    train = manifest[manifest["split"] == "train"]
    kept = train[train["keep"]]["label"].value_counts()
    largest_other = int(train[train["label"] != "NV"]["label"].value_counts().max())
    assert kept["NV"] == largest_other, f"train NV cut to the next class ({largest_other}): {kept}"
    assert (train["label"] == "NV").sum() > largest_other, "NV should need cutting in this data"
    dropped = manifest[~manifest["keep"]]
    assert set(dropped["split"]) == {"train"}, f"only train is balanced: {set(dropped['split'])}"
    assert set(dropped["label"]) == {"NV"}, f"only NV is cut: {set(dropped['label'])}"


def test_the_manifest_records_its_source(manifest: pd.DataFrame, data: Path) -> None:
    assert set(manifest["source"]) == {str(data.resolve())}, set(manifest["source"])
    assert list(manifest.columns[: len(mf.REQUIRED)]) == mf.REQUIRED, list(manifest.columns)


# --------------------------------------------------------------------------- saved manifests


def test_a_manifest_is_saved_under_its_hash(manifest: pd.DataFrame, tmp_path: Path) -> None:
    work, uri = str(tmp_path / "work"), "s3://bucket/isic"
    ref = save_manifest(manifest, DatasetState(work, uri), latest=False)
    root = tmp_path / "work" / "manifests" / dataset_id(uri)
    assert Path(ref.uri) == root / f"manifest-{mf.manifest_hash(manifest)}.parquet", ref
    assert ref.hash == mf.manifest_hash(manifest), ref
    assert (ref.dataset, ref.images) == (dataset_id(uri), len(manifest)), ref
    pd.testing.assert_frame_equal(mf.read(ref.uri), manifest.reset_index(drop=True))
    assert latest_manifest(DatasetState(work, uri)) is None, (
        "latest=False must not write latest.json"
    )
    staged = save_manifest(manifest, DatasetState(work, uri), latest=False, stage="split")
    assert Path(staged.uri).name.startswith("split-"), f"the stage names the file: {staged.uri}"


def test_a_changed_manifest_is_a_new_file_and_the_old_one_stays(
    manifest: pd.DataFrame, tmp_path: Path
) -> None:
    work, uri = str(tmp_path / "work"), "s3://bucket/isic"
    first = save_manifest(manifest, DatasetState(work, uri), latest=False)
    before = Path(first.uri).read_bytes()
    changed = manifest.copy()
    changed.loc[changed["keep"].idxmin(), "keep"] = True  # keep one more NV in train
    second = save_manifest(changed, DatasetState(work, uri), latest=False)
    assert second.uri != first.uri, "different content must get a different name"
    assert Path(first.uri).read_bytes() == before, "the earlier manifest must stay as it was"
    assert save_manifest(manifest, DatasetState(work, uri), latest=False).uri == first.uri, (
        "same content, name"
    )


def test_latest_is_none_first_then_follows_the_newest_save(
    manifest: pd.DataFrame, tmp_path: Path
) -> None:
    work, uri = str(tmp_path / "work"), "s3://bucket/isic"
    assert latest_manifest(DatasetState(work, uri)) is None, "no manifest yet: latest is None"
    lineage = {"listing_fingerprint": "fp1", "previous_uri": None, "split_key": "k"}
    first = save_manifest(manifest, DatasetState(work, uri), lineage=lineage)
    assert latest_manifest(DatasetState(work, uri)) == first, (
        "latest reads back the saved reference"
    )
    changed = manifest.copy()
    changed.loc[changed["keep"].idxmin(), "keep"] = True
    second = save_manifest(
        changed, DatasetState(work, uri), lineage={**lineage, "previous_uri": first.uri}
    )
    assert latest_manifest(DatasetState(work, uri)) == second, "latest moves to the newest manifest"
    assert latest_manifest(DatasetState(work, "s3://bucket/other")) is None, (
        "each dataset has its own latest"
    )


def test_manifest_ref_of_a_user_file(manifest: pd.DataFrame, data: Path, tmp_path: Path) -> None:
    parquet, csv = str(tmp_path / "mine.parquet"), str(tmp_path / "mine.csv")
    mf.write(manifest, parquet)
    mf.write(manifest, csv)
    ref = manifest_ref(parquet)
    assert ref.uri == parquet, ref
    assert ref.hash == mf.manifest_hash(manifest), "the hash is the manifest's version"
    assert ref.dataset == dataset_id(str(data)), f"the dataset comes from the source column: {ref}"
    assert ref.images == len(manifest), ref
    assert ref.listing_fingerprint is None and ref.previous_uri is None, "no lineage for a file"
    assert manifest_ref(csv).hash == ref.hash, "the same manifest as CSV has the same version"
