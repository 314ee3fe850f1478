"""List a dataset in either layout (class folders or ISIC 2019's CSV) into labelled image rows."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import pandas as pd

from skin.base.labels import CLASSES
from skin.data.images import is_image_name
from skin.data.manifest import frame_hash
from skin.data.storage import ObjectInfo, StorageError, Store, safe_key

log = logging.getLogger(__name__)

GROUND_TRUTH = "ISIC_2019_Training_GroundTruth.csv"
METADATA = "ISIC_2019_Training_Metadata.csv"
IMAGE_COLUMNS = ["key", "label", "size", "fingerprint", "image_id", "lesion_id"]


class ListingError(ValueError):
    """The dataset cannot be listed: no images, or an unreadable ground-truth file."""


@dataclass
class Listing:
    """Labelled images plus everything skipped, with the reason for each skip."""

    layout: str
    images: pd.DataFrame
    skipped: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["key", "reason"]))

    def counts(self) -> pd.Series:
        return self.images["label"].value_counts().sort_index()

    def skip_counts(self) -> pd.Series:
        return self.skipped["reason"].value_counts() if len(self.skipped) else pd.Series(dtype=int)

    @property
    def fingerprint(self) -> str:
        """Content hash of everything listed: changes when an image is added, removed or changed,
        and when its metadata (lesion id, age, site, sex) is added or corrected."""

        return frame_hash(self.images.astype("string"))


def _image_id(key: str) -> str:
    return PurePosixPath(key).stem


def list_dataset(store: Store, layout: str = "auto", classes: Sequence[str] = CLASSES) -> Listing:
    """List every image once; nothing is dropped silently (see Listing.skipped)."""
    objects = list(store.list())
    keys = {o.key for o in objects}
    if layout == "auto":
        layout = "isic" if _find(keys, GROUND_TRUTH) else "folders"
    if layout == "isic":
        listing = _list_isic(store, objects, classes)
    elif layout == "folders":
        listing = _list_folders(objects, classes)
    else:
        raise ListingError(f"unknown layout {layout!r}: use auto, folders or isic")
    meta_key = _find(keys, METADATA)
    if meta_key:
        listing.images = _attach_metadata(listing.images, _read_csv(store, meta_key))
    if listing.images.empty:
        skipped = listing.skip_counts().to_dict()
        raise ListingError(
            f"no labelled images found at {store.uri} (layout {layout}); skipped: {skipped or 'none'}"
        )
    listing.images = listing.images.sort_values("key", ignore_index=True)
    log.info(
        "listed %d images at %s (%s layout), skipped %d",
        len(listing.images),
        store.uri,
        layout,
        len(listing.skipped),
    )
    return listing


def _find(keys: Iterable[str], name: str) -> str | None:
    hits = sorted(k for k in keys if PurePosixPath(k).name == name)
    return min(hits, key=len) if hits else None


def _read_csv(store: Store, key: str) -> pd.DataFrame:
    try:
        return pd.read_csv(io.BytesIO(store.get(key)))
    except (StorageError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ListingError(f"cannot read {key} at {store.uri}: {err}") from err


def _key_problem(key: str) -> str | None:
    try:
        safe_key(key)
    except StorageError:
        return "unsafe key"
    return None if is_image_name(key) else "not an image file"


def _rows(objs: Iterable[tuple[ObjectInfo, str]]) -> pd.DataFrame:
    records = [
        {
            "key": o.key,
            "label": label,
            "size": o.size,
            "fingerprint": o.fingerprint,
            "image_id": _image_id(o.key),
            "lesion_id": None,
        }
        for o, label in objs
    ]
    return pd.DataFrame.from_records(records, columns=IMAGE_COLUMNS)


def _skips(items: Iterable[tuple[str, str]]) -> pd.DataFrame:
    return pd.DataFrame.from_records(list(items), columns=["key", "reason"])


def _list_folders(objects: list[ObjectInfo], classes: Sequence[str]) -> Listing:
    by_upper = {c.upper(): c for c in classes}
    good: list[tuple[ObjectInfo, str]] = []
    skipped: list[tuple[str, str]] = []
    for obj in objects:
        problem = _key_problem(obj.key)
        if PurePosixPath(obj.key).name in (GROUND_TRUTH, METADATA):
            continue
        if problem:
            skipped.append((obj.key, problem))
            continue
        parts = PurePosixPath(obj.key).parts
        if len(parts) < 2:
            skipped.append((obj.key, "not in a class folder"))
            continue
        label = by_upper.get(parts[0].upper())
        if label is None:
            skipped.append((obj.key, f"unknown class folder {parts[0]}"))
            continue
        if obj.size == 0:
            skipped.append((obj.key, "empty object"))
            continue
        good.append((obj, label))
    return Listing("folders", _rows(good), _skips(skipped))


def _list_isic(store: Store, objects: list[ObjectInfo], classes: Sequence[str]) -> Listing:
    gt_key = _find((o.key for o in objects), GROUND_TRUTH)
    if gt_key is None:
        raise ListingError(
            f"layout isic needs {GROUND_TRUTH} at {store.uri}; none found"
            " (use layout auto or folders for one folder per class)"
        )
    truth = _read_csv(store, gt_key)
    if "image" not in truth.columns:
        raise ListingError(f"{gt_key}: no 'image' column (columns: {list(truth.columns)})")
    label_cols = [c for c in classes if c in truth.columns]
    if not label_cols:
        raise ListingError(f"{gt_key}: none of the classes {list(classes)} is a column")
    skipped: list[tuple[str, str]] = []
    onehot = truth[label_cols].fillna(0).astype(float) > 0.5
    n_set = onehot.sum(axis=1)
    labels: dict[str, str] = {}
    for image, row_set, n in zip(truth["image"].astype(str), onehot.to_numpy(), n_set, strict=True):
        if n == 1:
            labels[image] = label_cols[int(row_set.argmax())]
        elif n == 0:
            unk = "UNK" in truth.columns
            skipped.append(
                (image, "ground-truth row has no known class" + (" (UNK)" if unk else ""))
            )
        else:
            skipped.append((image, "ground-truth row has several classes"))
    rejected = {image for image, _ in skipped}
    good: list[tuple[ObjectInfo, str]] = []
    seen: set[str] = set()
    for obj in objects:
        name = PurePosixPath(obj.key).name
        if name in (GROUND_TRUTH, METADATA):
            continue
        problem = _key_problem(obj.key)
        if problem:
            skipped.append((obj.key, problem))
            continue
        image_id = _image_id(obj.key)
        if image_id in rejected:
            continue  # its ground-truth row was already reported
        if image_id not in labels:
            skipped.append((obj.key, "image not in the ground-truth CSV"))
            continue
        if image_id in seen:
            skipped.append((obj.key, "second file for the same image id"))
            continue
        if obj.size == 0:
            skipped.append((obj.key, "empty object"))
            continue
        seen.add(image_id)
        good.append((obj, labels[image_id]))
    skipped.extend(
        (image, "listed in the ground-truth CSV but missing from the store")
        for image in sorted(set(labels) - seen)
    )
    return Listing("isic", _rows(good), _skips(skipped))


def _attach_metadata(images: pd.DataFrame, meta: pd.DataFrame) -> pd.DataFrame:
    """Bring lesion_id (and the other metadata columns) in, matched by image id."""
    if "image" not in meta.columns:
        log.warning("metadata CSV has no 'image' column; ignored")
        return images
    meta = meta.drop_duplicates("image").set_index("image")
    out = images.copy()
    if "lesion_id" in meta.columns:
        lesion = out["image_id"].map(meta["lesion_id"])
        out["lesion_id"] = lesion.where(lesion.notna() & (lesion.astype(str) != ""), None)
    for col in ("age_approx", "anatom_site_general", "sex"):
        if col in meta.columns:
            out[col] = out["image_id"].map(meta[col])
    return out
