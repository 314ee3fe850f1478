"""Near-duplicate images: perceptual hashes that survive re-encoding, resizing, small crops, 90°
turns, flips and brightness; candidates from hash bands (never all pairs); clusters by union-find."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from PIL import Image

HASH_SIDE = 16  # a 16 x 16 pHash: 256 bits (8 x 8 cannot tell apart look-alike lesions)
BITS = HASH_SIDE * HASH_SIDE
GREY_SIDE = 4 * HASH_SIDE  # imagehash's pHash: a DCT of a grey image 4x the hash's side
# Regions hashed besides the full frame, as (side, x, y) shares of the square: a copy cropped by
# 5-10 % around the centre, or by 5 % towards a corner, is the full frame of one of them.
REGIONS = (
    (1.0, 0.0, 0.0),
    (0.95, 0.025, 0.025),
    (0.9, 0.05, 0.05),
    (0.95, 0.0, 0.0),
    (0.95, 0.05, 0.0),
    (0.95, 0.0, 0.05),
    (0.95, 0.05, 0.05),
)
TURNS = 8  # the dihedral group: 4 rotations by 90°, each with and without a mirror
VARIANTS = len(REGIONS) * TURNS
BANDS = 16  # a 256-bit hash cut into 16-bit bands: any two within 14 bits share two exactly
SHARED = 2  # bands a candidate pair must share (one lets 5x more look-alike pairs through)
# Bands are cut from the bits in a fixed shuffled order: pHash's bits are ordered by frequency,
# and neighbouring low frequencies agree across look-alike images (5x more candidates unshuffled).
BAND_ORDER = np.random.default_rng(20231).permutation(BITS)


def grey(square: np.ndarray, region: tuple[float, float, float] = (1.0, 0.0, 0.0)) -> np.ndarray:
    """One region (side, x, y as shares) of an RGB square as the grey GREY_SIDE² image pHash
    reads (as imagehash does)."""
    img = Image.fromarray(square)
    side, (share, x, y) = img.size[0], region
    if share < 1.0:
        box = (x * side, y * side, (x + share) * side, (y + share) * side)
        img = img.crop(tuple(round(v) for v in box))
    img = img.convert("L").resize((GREY_SIDE, GREY_SIDE), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.float64)


def dihedral_phashes(pixels: np.ndarray) -> np.ndarray:
    """pHash bits of the 8 turns and mirrors of a grey image from one DCT: [8, BITS] bool.

    A mirror flips the sign of the odd DCT frequencies along its axis and a transpose swaps the
    axes, so every variant's low-frequency block comes from the first one (turn 0 is imagehash's
    `phash(img, hash_size=HASH_SIDE)`, bit for bit).
    """
    from scipy.fft import dctn  # scipy only when auditing: off a cached run's path

    low = dctn(pixels, type=2, axes=(0, 1), norm=None)[:HASH_SIDE, :HASH_SIDE]
    odd = (-1.0) ** np.arange(HASH_SIDE)
    variants = []
    for block in (low, low.T):
        for flip_rows in (False, True):
            for flip_cols in (False, True):
                v = block * (odd[:, None] if flip_rows else 1) * (odd[None, :] if flip_cols else 1)
                variants.append(v > np.median(v))
    return np.stack([v.reshape(-1) for v in variants])


def image_codes(square: np.ndarray) -> np.ndarray:
    """Every hashed variant of one image (regions x dihedral turns), packed: [VARIANTS, 32]."""
    bits = np.concatenate([dihedral_phashes(grey(square, r)) for r in REGIONS])
    return np.packbits(bits, axis=1)


def reference_phash(square: np.ndarray) -> np.ndarray:
    """imagehash's own pHash of the full image (what turn 0 must equal): [BITS] bool."""
    import imagehash  # the reference the tests hold our hashes to, not on the audit's path

    img = Image.fromarray(square).convert("L")
    img = img.resize((GREY_SIDE, GREY_SIDE), Image.Resampling.LANCZOS)
    return imagehash.phash(img, hash_size=HASH_SIDE).hash.reshape(-1)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bit distances between packed codes (broadcast over leading axes)."""
    x = np.bitwise_xor(
        np.ascontiguousarray(a).view(np.uint64), np.ascontiguousarray(b).view(np.uint64)
    )
    return np.bitwise_count(x).sum(axis=-1, dtype=np.int32)


def candidate_blocks(
    codes: np.ndarray, max_bucket: int = 2000, block: int = 2048
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Pairs (i < j) whose hashes share SHARED 16-bit bands exactly, a block of query images at
    a time (memory bounded by one block's matches), each with the too-full band keys it skipped.

    Each image's upright full-frame hash is looked up among every variant of every image, band
    by band (multi-index hashing): two codes within BANDS - SHARED bits always share SHARED
    bands, so no such pair is missed, and only band-sharing pairs are ever compared.
    """
    n = len(codes)
    shuffled = np.packbits(np.unpackbits(codes, axis=2)[:, :, BAND_ORDER], axis=2)
    bands = np.ascontiguousarray(shuffled).view(np.uint16)  # [n, V, BANDS]
    band_id = np.arange(BANDS, dtype=np.int64) << 16
    index_keys = (bands.astype(np.int64) | band_id).reshape(-1)
    owner = np.repeat(np.arange(n), VARIANTS * BANDS)
    order = np.argsort(index_keys, kind="stable")
    index_keys, owner = index_keys[order], owner[order]
    for first_row in range(0, n, block):
        rows = np.arange(first_row, min(first_row + block, n))
        query = (bands[rows, 0, :].astype(np.int64) | band_id).reshape(-1)
        asker = np.repeat(rows, BANDS)
        lo = np.searchsorted(index_keys, query, side="left")
        size = np.searchsorted(index_keys, query, side="right") - lo
        crowded = size > max_bucket
        size = np.where(crowded, 0, size)
        first = np.repeat(asker, size)
        start = np.repeat(lo - np.cumsum(size) + size, size)
        second = owner[start + np.arange(size.sum())]
        band = np.repeat(np.tile(np.arange(BANDS), len(rows)), size)
        keep = first != second
        a, b = np.minimum(first, second)[keep], np.maximum(first, second)[keep]
        pair_band = np.unique((a.astype(np.int64) * n + b) * BANDS + band[keep])
        pairs, shared = np.unique(pair_band // BANDS, return_counts=True)
        pairs = pairs[shared >= SHARED]
        yield np.stack([pairs // n, pairs % n], axis=1), np.unique(query[crowded])


def candidate_pairs(codes: np.ndarray, max_bucket: int = 2000) -> tuple[np.ndarray, int]:
    """Every candidate pair at once, and how many band keys were skipped as too full."""
    blocks = list(candidate_blocks(codes, max_bucket))
    pairs = np.unique(np.concatenate([p for p, _ in blocks]), axis=0)
    return pairs, len(np.unique(np.concatenate([c for _, c in blocks])))


def pair_distances(codes: np.ndarray, pairs: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Each pair's smallest bit distance: one's upright full frame against any variant of the other."""
    out = np.empty(len(pairs), dtype=np.int32)
    for s in range(0, len(pairs), chunk):
        i, j = pairs[s : s + chunk, 0], pairs[s : s + chunk, 1]
        ij = hamming(codes[i, :1], codes[j]).min(axis=1)
        ji = hamming(codes[j, :1], codes[i]).min(axis=1)
        out[s : s + chunk] = np.minimum(ij, ji)
    return out


Embed = Callable[[np.ndarray], np.ndarray]  # image indices -> one embedding per row


@dataclass(frozen=True)
class NearDuplicates:
    """Confirmed pairs (key_a, key_b, distance, similarity, rule) and clusters (key, cluster)."""

    pairs: pd.DataFrame
    clusters: pd.DataFrame
    candidates: int
    crowded_buckets: int


PAIR_COLUMNS = ["key_a", "key_b", "distance", "similarity", "cosine", "rule"]


def find_near_duplicates(
    keys: Sequence[str],
    fingerprints: Sequence[str],
    codes: np.ndarray,
    max_distance: int,
    *,
    embed: Embed | None = None,
    min_cosine: float = 0.9,
    max_bucket: int = 2000,
) -> NearDuplicates:
    """Pairs within `max_distance` bits (confirmed by embedding cosine when `embed` is given),
    clustered: each cluster is named by its smallest key, with its weakest link and its rules."""
    keys_arr = np.asarray(keys, dtype=object)
    fps = np.asarray(fingerprints, dtype=object)
    pairs, dist, candidates, crowded = _close_pairs(codes, max_distance, max_bucket)
    cosine = np.full(len(pairs), np.nan)
    rule = np.where(fps[pairs[:, 0]] == fps[pairs[:, 1]], "identical file", f"phash≤{max_distance}")
    if embed is not None and len(pairs):
        cosine = _cosines(embed, pairs)
        same_file = rule == "identical file"
        kept = same_file | (cosine >= min_cosine)
        rule = np.where(same_file, rule, f"phash≤{max_distance}+cosine≥{min_cosine:g}")
        pairs, dist, cosine, rule = pairs[kept], dist[kept], cosine[kept], rule[kept]
    table = pd.DataFrame(
        {
            "key_a": keys_arr[pairs[:, 0]] if len(pairs) else [],
            "key_b": keys_arr[pairs[:, 1]] if len(pairs) else [],
            "distance": dist,
            "similarity": 1.0 - dist / BITS,
            "cosine": cosine,
            "rule": rule,
        },
        columns=PAIR_COLUMNS,
    )
    return NearDuplicates(table, clusters_of(keys_arr, pairs, table), candidates, crowded)


def _close_pairs(
    codes: np.ndarray, max_distance: int, max_bucket: int
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """The candidate pairs within `max_distance` bits and their distances, block by block; the
    candidates compared and the band keys skipped as too full."""
    found = [np.zeros((0, 2), dtype=np.int64)]
    dists, crowded, candidates = [np.zeros(0, dtype=np.int32)], [np.zeros(0, np.int64)], 0
    for pairs, skipped in candidate_blocks(codes, max_bucket):
        dist = pair_distances(codes, pairs)
        close = dist <= max_distance
        found.append(pairs[close])
        dists.append(dist[close])
        crowded.append(skipped)
        candidates += len(pairs)
    pairs, first = np.unique(np.concatenate(found), axis=0, return_index=True)
    return pairs, np.concatenate(dists)[first], candidates, len(np.unique(np.concatenate(crowded)))


def _cosines(embed: Embed, pairs: np.ndarray) -> np.ndarray:
    """Cosine similarity of each pair's embeddings (each image embedded once)."""
    members = np.unique(pairs)
    vectors = np.asarray(embed(members), dtype=np.float64)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    row = {int(m): r for r, m in enumerate(members)}
    a = vectors[[row[int(i)] for i in pairs[:, 0]]]
    b = vectors[[row[int(j)] for j in pairs[:, 1]]]
    return (a * b).sum(axis=1)


CLUSTER_COLUMNS = ["key", "cluster", "size", "similarity", "rules"]


def clusters_of(keys: np.ndarray, pairs: np.ndarray, table: pd.DataFrame) -> pd.DataFrame:
    """Connected components of the confirmed pairs: members, size, weakest similarity, rules."""
    from scipy.sparse import coo_matrix  # scipy only when auditing: off a cached run's path
    from scipy.sparse.csgraph import connected_components

    if not len(pairs):
        return pd.DataFrame(columns=CLUSTER_COLUMNS)
    n = len(keys)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    members = np.unique(pairs)
    out = pd.DataFrame({"key": keys[members], "component": label[members]})
    out["cluster"] = out.groupby("component")["key"].transform("min")
    out["size"] = out.groupby("component")["key"].transform("size")
    component = pd.Series(label[pairs[:, 0]])
    weakest = table["similarity"].groupby(component.to_numpy()).min()
    rules = table["rule"].groupby(component.to_numpy()).agg(lambda r: ",".join(sorted(set(r))))
    out["similarity"] = out["component"].map(weakest)
    out["rules"] = out["component"].map(rules)
    return out[CLUSTER_COLUMNS].sort_values(["cluster", "key"], ignore_index=True)
