"""Tests for the synthetic ISIC-like image generator: determinism, bookkeeping and learnability."""

from __future__ import annotations

import io
import itertools
import re
from collections import Counter, defaultdict

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skin.base.labels import CLASSES, ISIC2019_COUNTS
from skin.data.synthetic import (
    SampleImage,
    class_counts,
    encode_jpeg,
    iter_sample_images,
    render,
    render_lesion,
    sample_lesion,
    sample_view,
)

SMALL = dict.fromkeys(CLASSES, 6)


def _decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def _generate(counts: dict[str, int], **kwargs: object) -> list[SampleImage]:
    kwargs.setdefault("size", 32)
    kwargs.setdefault("seed", 0)
    return list(iter_sample_images(counts, **kwargs))  # type: ignore[arg-type]


# --- class_counts ---------------------------------------------------------------------------


def test_class_counts_reproduces_isic2019() -> None:
    counts = class_counts(total=sum(ISIC2019_COUNTS.values()))
    assert counts == ISIC2019_COUNTS, f"total=25331 should give ISIC 2019 counts, got {counts}"
    assert tuple(counts) == CLASSES, f"keys should follow CLASSES order, got {tuple(counts)}"


@pytest.mark.parametrize("total", [24, 40, 100, 400, 1001])
def test_class_counts_total_sums_and_respects_minimum(total: int) -> None:
    counts = class_counts(total=total)
    assert sum(counts.values()) == total, f"counts {counts} should sum to {total}"
    assert min(counts.values()) >= 3, f"every class needs >= 3 images, got {counts}"
    assert counts["NV"] == max(counts.values()), f"NV should stay the largest class: {counts}"


def test_class_counts_400_is_proportional() -> None:
    counts = class_counts(total=400)
    for c in CLASSES:
        share = 400 * ISIC2019_COUNTS[c] / sum(ISIC2019_COUNTS.values())
        assert abs(counts[c] - share) <= 1 or counts[c] == 3, f"{c}: {counts[c]} vs {share:.2f}"


def test_class_counts_per_class() -> None:
    assert class_counts(per_class=7) == dict.fromkeys(CLASSES, 7), "per_class should be uniform"


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"per_class": 5, "total": 40}, {"per_class": 0}, {"total": 10}, {"total": -1}],
)
def test_class_counts_rejects_bad_arguments(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        class_counts(**kwargs)


# --- the dataset iterator -------------------------------------------------------------------


def test_same_seed_same_bytes_different_seed_differs() -> None:
    a = _generate(SMALL, seed=11)
    b = _generate(SMALL, seed=11)
    c = _generate(SMALL, seed=12)
    assert a == b, "the same seed must reproduce every field byte for byte"
    assert [r.data for r in a] != [r.data for r in c], "a different seed must give other images"
    assert [r.image_id for r in a] != [r.image_id for r in c], "a different seed, other ids"


def test_ids_unique_well_formed_and_not_class_ordered() -> None:
    rows = _generate(dict.fromkeys(CLASSES, 25), size=16, seed=3)
    ids = [r.image_id for r in rows]
    assert len(set(ids)) == len(ids), "image ids must be unique across the dataset"
    bad = [i for i in ids if not re.fullmatch(r"ISIC_\d{7}", i)]
    assert not bad, f"image ids must look like ISIC_0000123, got {bad[:3]}"
    bad = [r.lesion_id for r in rows if not re.fullmatch(r"HAM_\d{7}", r.lesion_id)]
    assert not bad, f"lesion ids must look like HAM_0001234, got {bad[:3]}"
    by_id = [r.label for r in sorted(rows, key=lambda r: r.image_id)]
    changes = sum(x != y for x, y in itertools.pairwise(by_id))
    assert changes > len(rows) // 2, f"id order must not group classes ({changes} label changes)"


def test_counts_respected_including_missing_classes() -> None:
    counts = {"NV": 9, "MEL": 4, "DF": 1, "VASC": 0}
    rows = _generate(counts, repeat_fraction=0.5, duplicate_fraction=0.3)
    got = Counter(r.label for r in rows)
    assert got == Counter({"NV": 9, "MEL": 4, "DF": 1}), f"wrong per-class counts: {got}"


def test_images_decode_at_requested_size_in_rgb() -> None:
    for size in (24, 48):
        for r in _generate(dict.fromkeys(CLASSES, 2), size=size):
            img = _decode(r.data)
            assert img.format == "JPEG", f"{r.image_id} should be a JPEG, got {img.format}"
            assert img.mode == "RGB", f"{r.image_id} should be RGB, got {img.mode}"
            assert img.size == (size, size), f"{r.image_id} is {img.size}, want {size}x{size}"


def test_render_lesion_every_class_is_rgb_and_encodes() -> None:
    rng = np.random.default_rng(0)
    for label in CLASSES:
        img = render_lesion(label, rng, size=40)
        assert (img.mode, img.size) == ("RGB", (40, 40)), f"{label}: {img.mode} {img.size}"
        assert _decode(encode_jpeg(img)).size == (40, 40), f"{label}: JPEG round trip failed"
        assert np.asarray(img).std() > 5, f"{label}: image should not be flat"
    with pytest.raises(ValueError):
        render_lesion("XYZ", rng)


def test_iterator_rejects_bad_arguments() -> None:
    for kwargs in (
        {"counts": {"FOO": 3}},
        {"counts": SMALL, "repeat_fraction": 1.0},
        {"counts": SMALL, "duplicate_fraction": -0.1},
        {"counts": {"NV": -1}},
    ):
        with pytest.raises(ValueError):
            _generate(**kwargs)  # type: ignore[arg-type]


# --- repeats and duplicates ------------------------------------------------------------------


def test_repeats_share_lesion_id_within_a_class() -> None:
    rows = _generate(dict.fromkeys(CLASSES, 20), repeat_fraction=0.4)
    by_lesion: dict[str, list[SampleImage]] = defaultdict(list)
    for r in rows:
        by_lesion[r.lesion_id].append(r)
    groups = [g for g in by_lesion.values() if len(g) > 1]
    repeats = sum(len(g) - 1 for g in groups)
    assert 0.25 * len(rows) < repeats < 0.55 * len(rows), f"{repeats} repeats of {len(rows)}"
    for g in groups:
        assert len({r.label for r in g}) == 1, f"lesion {g[0].lesion_id} spans classes"
        assert len({r.data for r in g}) == len(g), f"repeats of {g[0].lesion_id} must differ"
    none = _generate(dict.fromkeys(CLASSES, 20), repeat_fraction=0.0)
    assert len({r.lesion_id for r in none}) == len(none), "repeat_fraction=0: one image a lesion"


def test_repeat_view_looks_like_the_same_lesion() -> None:
    rng = np.random.default_rng(5)
    same, other = [], []
    for label in CLASSES:
        for _ in range(6):
            p, v = sample_lesion(label, rng), sample_view(rng)
            a = np.asarray(render(p, v, 32, rng), dtype=np.float32)
            b = np.asarray(render(p, sample_view(rng, v), 32, rng), dtype=np.float32)
            c = np.asarray(render_lesion(label, rng, 32), dtype=np.float32)
            same.append(np.abs(a - b).mean())
            other.append(np.abs(a - c).mean())
    assert np.mean(same) < 0.7 * np.mean(other), (
        f"a second view should be closer to the first ({np.mean(same):.1f}) than another "
        f"lesion of the class is ({np.mean(other):.1f})"
    )


def test_duplicates_are_byte_identical_copies_under_new_ids() -> None:
    counts = dict.fromkeys(CLASSES, 10)
    rows = _generate(counts, duplicate_fraction=0.2, repeat_fraction=0.0)
    seen: dict[bytes, SampleImage] = {}
    dups = []
    for r in rows:
        if r.data in seen:
            first = seen[r.data]
            assert first.label == r.label, f"{r.image_id} copies an image of another class"
            assert first.image_id != r.image_id, f"{r.image_id} should get a new image id"
            dups.append(r)
        else:
            seen[r.data] = r
    per_class = Counter(r.label for r in dups)
    assert per_class == Counter(dict.fromkeys(CLASSES, 2)), f"want 2 per class, got {per_class}"
    clean = _generate(counts, duplicate_fraction=0.0)
    assert len({r.data for r in clean}) == len(clean), "without duplicates all bytes differ"


# --- learnability ----------------------------------------------------------------------------


def _features(img: Image.Image) -> np.ndarray:
    """Downsampled pixels, per-channel and joint colour histograms, and an edge histogram."""
    a = np.asarray(img, dtype=np.float32) / 255.0
    pixels = np.asarray(img.resize((8, 8), Image.Resampling.BOX), dtype=np.float32).ravel() / 255
    hists = [np.histogram(a[..., c], bins=8, range=(0, 1))[0] / a[..., c].size for c in range(3)]
    q = np.minimum((a * 4).astype(np.int64), 3)
    joint = np.bincount((q[..., 0] * 16 + q[..., 1] * 4 + q[..., 2]).ravel(), minlength=64)
    grey = a.mean(axis=-1)
    grad = np.hypot(np.diff(grey, axis=0)[:, :-1], np.diff(grey, axis=1)[:-1])
    edges = np.histogram(grad, bins=8, range=(0, 0.4))[0] / grad.size
    return np.concatenate([pixels, *hists, np.sqrt(joint / grey.size), edges])


@pytest.fixture(scope="module")
def learn_set() -> tuple[list[Image.Image], np.ndarray]:
    rows = _generate(class_counts(per_class=40), size=32, seed=2024)
    return [_decode(r.data).convert("RGB") for r in rows], np.array(
        [CLASSES.index(r.label) for r in rows]
    )


def _fit_score(x: np.ndarray, y: np.ndarray) -> float:
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.3, max_iter=3000))
    clf.fit(x_tr, y_tr)
    return float(balanced_accuracy_score(y_te, clf.predict(x_te)))


def test_simple_classifier_learns_the_classes(
    learn_set: tuple[list[Image.Image], np.ndarray],
) -> None:
    images, y = learn_set
    score = _fit_score(np.stack([_features(i) for i in images]), y)
    print(f"logistic regression on pixels + histograms: balanced accuracy {score:.3f}")
    assert score >= 0.6, f"classes should be learnable (chance 0.125), got {score:.3f}"


def test_mean_colour_alone_is_not_enough(
    learn_set: tuple[list[Image.Image], np.ndarray],
) -> None:
    images, y = learn_set
    means = np.stack([np.asarray(i, dtype=np.float32).mean(axis=(0, 1)) for i in images])
    score = _fit_score(means, y)
    print(f"logistic regression on mean colour: balanced accuracy {score:.3f}")
    assert score < 0.95, f"mean colour alone should not separate the classes, got {score:.3f}"
