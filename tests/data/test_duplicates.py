"""Near-duplicates: hashes that match imagehash, candidates that miss no close pair, clusters,
and planted copies of every kind found (recall and precision measured, floors asserted)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from skin.data.duplicates import (
    BITS,
    VARIANTS,
    candidate_pairs,
    dihedral_phashes,
    find_near_duplicates,
    grey,
    hamming,
    image_codes,
    pair_distances,
    reference_phash,
)
from skin.data.images import decode
from skin.data.synthetic import render_lesion
from tests.helpers import COPY_KINDS, planted_images

TURNS = [
    lambda a: a,
    lambda a: np.rot90(a, 1),
    lambda a: np.rot90(a, 2),
    lambda a: np.rot90(a, 3),
    lambda a: a[:, ::-1],
    lambda a: np.rot90(a[:, ::-1], 1),
    lambda a: np.rot90(a[:, ::-1], 2),
    lambda a: np.rot90(a[:, ::-1], 3),
]


def test_every_turn_and_mirror_is_imagehash_phash_of_the_turned_image() -> None:
    square = np.asarray(render_lesion("MEL", np.random.default_rng(0), size=96))
    variants = dihedral_phashes(grey(square))
    assert (variants[0] == reference_phash(square)).all(), "turn 0 differs from imagehash.phash"
    for k, turn in enumerate(TURNS):
        own = reference_phash(np.ascontiguousarray(turn(square)))
        best = min(int((own != v).sum()) for v in variants)
        assert best <= 4, f"turn {k}: imagehash's pHash of the turned image is {best} bits off"


def _random_codes(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=(n, VARIANTS, BITS // 8), dtype=np.uint8)


def test_candidates_hold_every_pair_within_14_bits_and_never_all_pairs() -> None:
    rng = np.random.default_rng(1)
    codes = _random_codes(300, rng)
    for i in range(0, 60, 2):  # plant close pairs: j = i+1 is i with up to 14 bits flipped
        bits = np.unpackbits(codes[i, 0])
        flip = rng.choice(BITS, size=int(rng.integers(0, 15)), replace=False)
        bits[flip] ^= 1
        codes[i + 1, int(rng.integers(VARIANTS))] = np.packbits(bits)
    pairs, crowded = candidate_pairs(codes)
    found = {tuple(p) for p in pairs.tolist()}
    brute = hamming(codes[:, None, :1], codes[None, :, :]).min(axis=2)
    close = {(i, j) for i in range(300) for j in range(i + 1, 300) if brute[i, j] <= 14}
    assert close <= found, f"missed close pairs: {sorted(close - found)[:5]}"
    assert crowded == 0
    assert len(pairs) < 300 * 299 / 2 / 10, f"{len(pairs)} candidates: close to all pairs"
    assert (pair_distances(codes, pairs) >= 0).all()


def test_clusters_join_chains_name_them_by_the_smallest_key_and_keep_their_rule() -> None:
    rng = np.random.default_rng(2)
    codes = _random_codes(6, rng)
    codes[1] = codes[0]
    codes[2, :, 1:] = codes[1, :, 1:]  # 2 is 1 with one byte changed: a chain 0-1-2
    codes[2, :, 0] = codes[1, :, 0] ^ 1
    keys = ["k5", "k3", "k4", "k0", "k1", "k2"]
    fps = ["a", "a", "b", "c", "d", "e"]
    found = find_near_duplicates(keys, fps, codes, max_distance=4)
    clusters = found.clusters.set_index("key")
    assert set(clusters.index) == {"k5", "k3", "k4"}
    assert set(clusters["cluster"]) == {"k3"} and set(clusters["size"]) == {3}
    assert clusters.loc["k5", "rules"] == "identical file,phash≤4"
    assert clusters["similarity"].min() == pytest.approx(1 - 1 / BITS)


def test_embeddings_confirm_or_reject_hash_pairs() -> None:
    rng = np.random.default_rng(3)
    codes = _random_codes(4, rng)
    codes[1], codes[3] = codes[0], codes[2]
    vectors = np.array([[1.0, 0.0], [1.0, 0.05], [0.0, 1.0], [1.0, 0.0]])
    found = find_near_duplicates(
        ["a", "b", "c", "d"], ["1", "2", "3", "4"], codes, 0, embed=lambda i: vectors[i]
    )
    assert found.pairs[["key_a", "key_b"]].values.tolist() == [["a", "b"]]
    assert found.pairs["rule"].iloc[0] == "phash≤0+cosine≥0.9"


def measure_planted(per_class: int, copies_per_kind: int, max_distance: int = 16) -> pd.DataFrame:
    """Recall per kind of copy and precision over all pairs the audit reports (a pair is right
    when both images come from one original)."""
    images, truth = planted_images(per_class, copies_per_kind)
    keys = [s.image_id for s in images]
    codes = np.stack([image_codes(decode(s.data, 128)) for s in images])
    found = find_near_duplicates(keys, keys, codes, max_distance)
    origin = {k: truth.get(k, (k, ""))[0] for k in keys}
    right = [
        origin[a] == origin[b]
        for a, b in zip(found.pairs["key_a"], found.pairs["key_b"], strict=True)
    ]
    pairs = {frozenset(p) for p in found.pairs[["key_a", "key_b"]].values.tolist()}
    rows = []
    for kind in COPY_KINDS:
        planted = [(c, o) for c, (o, k) in truth.items() if k == kind]
        hit = sum(frozenset(p) in pairs for p in planted)
        rows.append({"kind": kind, "planted": len(planted), "recall": hit / len(planted)})
    out = pd.DataFrame(rows).set_index("kind")
    out.attrs["precision"] = float(np.mean(right)) if right else 1.0
    out.attrs["reported"] = len(right)
    return out


def test_planted_copies_of_every_kind_are_found_at_high_precision() -> None:
    measured = measure_planted(per_class=50, copies_per_kind=12)
    print(measured, "precision", measured.attrs)
    assert (measured["recall"] >= 0.9).all(), f"recall under 0.9:\n{measured}"
    assert measured.attrs["precision"] >= 0.95, f"precision {measured.attrs}"
