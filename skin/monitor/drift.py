"""Data drift: is the current dataset still like the data the champion was trained on?

Three checks, each a two-sample test of reference against current: the class mix (chi-square),
image properties per image (size, brightness, contrast, colour; Kolmogorov-Smirnov), and the
distribution of backbone embeddings of a sample (MMD with an RBF kernel, permutation p-value).
Every p-value joins one Holm correction, so the report's false-alarm rate over all checks
together is at most `alpha` when nothing changed. Lesions are the units: photos of one lesion
share its looks and its label, so the class mix counts lesions, and the property and embedding
p-values permute whole lesions between the sides (an image without a lesion id, as in a batch
from the field, is a lesion of its own). The statistics are pure functions of arrays (`judge`
runs them all); `read_sample` and `embed` read images through the fetch cache,
`resolve_reference` the registry.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from skin.base.config import DRIFT_CHECKS, DRIFT_PROPERTIES
from skin.base.plots import pyplot
from skin.data import manifest as mf
from skin.data.fetch import Fetcher
from skin.data.imagecache import fetch_rows, objects_dir
from skin.data.images import ImageDecodeError, centre_crop, decode
from skin.track.refs import ModelRef, as_model_ref
from skin.track.tracking import MLflowRegistry, sha256_file

log = logging.getLogger(__name__)

PROPERTIES = DRIFT_PROPERTIES
CHECKS = DRIFT_CHECKS
THUMB = 64  # side the colour properties are measured at (DCT-downscaled: cheap for big JPEGs)
REFERENCE_SPLITS = ("train", "dev")  # what the champion learnt from and was selected on
CELLS = 1 << 22  # permuted labels held at once per KS check: 4 MB of bools
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


UNIT_COLUMNS = ["unit", "groups_reference", "groups_current"]


class DriftError(ValueError):
    """A drift check cannot run (no reference manifest, no images); says which and why."""


@dataclass(frozen=True)
class Check:
    """One test: its statistic, raw and Holm-adjusted p-values, and the verdict at alpha."""

    check: str  # class_mix, property:<name>, embedding_mmd
    statistic: float
    p_value: float
    p_adjusted: float = float("nan")
    drifted: bool = False
    detail: str = ""
    unit: str = "images"  # what was exchanged under the null: lesions (photos of one kept together)
    groups_reference: int = 0  # lesions (or images without a lesion id) the check used per side
    groups_current: int = 0


@dataclass
class DriftReport:
    """Every check and the overall verdict (drift when any adjusted p-value is below alpha)."""

    reference: str
    current: str
    n_reference: int
    n_current: int
    alpha: float
    checks: list[Check] = field(default_factory=list)
    note: str = ""  # why nothing was tested, when nothing was
    unit: str = "images"  # lesions: photos of one lesion moved together under the null
    groups_reference: int = 0  # lesions (an image without a lesion id: its own) of each side
    groups_current: int = 0
    unit_note: str = ""  # when a side had no lesion ids, what that means

    @property
    def drifted(self) -> bool:
        return any(c.drifted for c in self.checks)

    def table(self) -> pd.DataFrame:
        cols = ["check", "statistic", "p_value", "p_adjusted", "drifted", "detail", *UNIT_COLUMNS]
        return pd.DataFrame([asdict(c) for c in self.checks], columns=cols)

    def metrics(self) -> dict[str, float]:
        """MLflow metrics: `drift_detected`, and per check `drift_<check>_p` (Holm-adjusted) and
        `drift_<check>_stat` (class_mix, embedding_mmd, each property by its name)."""
        out = {"drift_detected": float(self.drifted), "drift_current_images": self.n_current}
        out |= {
            "drift_reference_groups": self.groups_reference,
            "drift_current_groups": self.groups_current,
        }
        for c in self.checks:
            name = "drift_" + c.check.removeprefix("property:")
            out |= {f"{name}_p": c.p_adjusted, f"{name}_stat": c.statistic}
        return out

    def verdict(self) -> str:
        if not self.checks:
            return f"not tested: {self.note}"
        flagged = [c.check for c in self.checks if c.drifted]
        if flagged:
            return f"DRIFT in {', '.join(flagged)} (Holm-adjusted p < {self.alpha})"
        return f"no drift found (every Holm-adjusted p ≥ {self.alpha})"

    def markdown(self) -> str:
        head = [
            f"# Drift: {self.verdict()}",
            "",
            f"Reference `{self.reference}` ({self.n_reference} images) · current `{self.current}`"
            f" ({self.n_current} images)",
            "",
            f"Unit of the tests: {self.unit} ({self.groups_reference} reference,"
            f" {self.groups_current} current){'; ' + self.unit_note if self.unit_note else ''}",
            "",
        ]
        if self.checks:
            head.append(self.table().to_markdown(index=False, floatfmt=".4g"))
        return "\n".join(head)

    def to_dict(self) -> dict[str, Any]:
        return {
            **{k: v for k, v in asdict(self).items() if k != "checks"},
            "drifted": self.drifted,
            "verdict": self.verdict(),
            "checks": self.table().to_dict(orient="records"),
        }


# --------------------------------------------------------------------------- lesions


def _known_ids(frame: pd.DataFrame) -> np.ndarray | None:
    """Each row's lesion id (None where missing or empty), or None without a lesion_id column."""
    if "lesion_id" not in frame.columns:
        return None
    ids = frame["lesion_id"].to_numpy(dtype=object)
    return np.where(pd.notna(ids) & (ids != ""), ids, None)


def lesion_groups(frame: pd.DataFrame) -> np.ndarray:
    """One code per row naming its lesion (`lesion_id`); a row without one is a group of its own."""
    ids = _known_ids(frame)
    if ids is None:
        return np.arange(len(frame))
    codes = pd.factorize(ids)[0]
    missing = codes < 0
    codes[missing] = codes.max(initial=-1) + 1 + np.arange(missing.sum())
    return codes


def has_lesion_ids(frame: pd.DataFrame) -> bool:
    """Does any row name its lesion (else each image is its own group)?"""
    ids = _known_ids(frame)
    return ids is not None and bool(np.not_equal(ids, None).any())


@dataclass(frozen=True)
class Pool:
    """Both sides' images pooled, reference first, with the group (lesion) of each. A side's
    lesions are its own: a lesion photographed on both sides counts as two groups, which can
    only make the sides look alike (hide drift), never raise a false alarm."""

    codes: np.ndarray  # group of each pooled image
    first: np.ndarray  # [groups] True: the group belongs to the reference
    unit: str  # lesions (some rows had lesion ids) or images

    @classmethod
    def of(cls, reference: np.ndarray, current: np.ndarray, unit: str) -> Pool:
        offset = int(reference.max(initial=-1)) + 1
        codes = np.concatenate([reference, current + offset])
        return cls(codes, np.arange(int(codes.max(initial=-1)) + 1) < offset, unit)

    @classmethod
    def of_frames(cls, reference: pd.DataFrame, current: pd.DataFrame) -> Pool:
        """The groups of two frames' rows (their `lesion_id`, when they have one)."""
        lesions = has_lesion_ids(reference) or has_lesion_ids(current)
        unit = "lesions" if lesions else "images"
        return cls.of(lesion_groups(reference), lesion_groups(current), unit)

    @property
    def grouped(self) -> bool:
        """Does any group hold several images (else every image is a unit of its own)?"""
        return len(self.first) < len(self.codes)

    @property
    def groups(self) -> tuple[int, int]:
        return int(self.first.sum()), int((~self.first).sum())

    def shuffles(self, permutations: int, seed: int) -> np.ndarray:
        """[permutations, groups]: which groups are the reference's, each row a reshuffle of
        whole groups (the null of no drift: lesions are exchangeable between the sides)."""
        rng = np.random.default_rng(seed)
        return rng.permuted(np.broadcast_to(self.first, (permutations, len(self.first))), axis=1)

    def tag(self, check: Check) -> Check:
        """`check` with this pool's unit and number of groups per side."""
        return replace(
            check, unit=self.unit, groups_reference=self.groups[0], groups_current=self.groups[1]
        )


# --------------------------------------------------------------------------- statistics


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values: family-wise error ≤ alpha, any dependence."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p)
    scaled = (len(p) - np.arange(len(p))) * p[order]
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted


def class_mix_test(
    reference: Sequence[str],
    current: Sequence[str],
    permutations: int = 2000,
    seed: int = 0,
    unit: str = "images",
) -> Check:
    """Chi-square test of homogeneity on the label counts (of `unit`: one label per lesion when
    lesions are the units). With any expected count under 5 (a small batch, a rare class) the
    asymptotic p-value is too small, so the statistic's p-value comes from label permutations
    instead, (1 + #>=) / (1 + permutations)."""
    from scipy import stats  # ~1 s to import: only when a check runs, not with the config

    ref = pd.Series(np.asarray(reference, dtype=object)).value_counts()
    cur = pd.Series(np.asarray(current, dtype=object)).value_counts()
    labels = sorted(set(ref.index) | set(cur.index))
    ref, cur = ref.reindex(labels, fill_value=0), cur.reindex(labels, fill_value=0)
    if len(labels) < 2:
        return Check("class_mix", 0.0, 1.0, detail="one class only", unit=unit)
    table = np.vstack([ref.to_numpy(), cur.to_numpy()])
    res = stats.chi2_contingency(table, correction=False)
    p_value, how = float(res.pvalue), "chi-square"
    if res.expected_freq.min() < 5:
        draws = np.random.default_rng(seed).multivariate_hypergeometric(
            table.sum(axis=0), int(table[1].sum()), size=permutations
        )
        null = _chi_square(np.stack([table.sum(axis=0) - draws, draws], axis=1))
        p_value = float((1 + np.sum(null >= res.statistic - 1e-9)) / (1 + permutations))
        how = f"permutation p ({permutations}), expected counts < 5"
    share = cur / max(cur.sum(), 1) - ref / max(ref.sum(), 1)
    moved = share.abs().idxmax()
    detail = f"largest change {moved} {share[moved]:+.1%} of {unit}; {how}"
    return Check("class_mix", float(res.statistic), p_value, detail=detail, unit=unit)


def class_mix_by_lesion(
    reference: pd.DataFrame, current: pd.DataFrame, permutations: int = 2000, seed: int = 0
) -> Check:
    """The class mix with lesions as the units: every photo of a lesion carries its one label
    (its first photo's), so counting photos would count one fact several times (rows without a
    lesion id count once each)."""
    pool = Pool.of_frames(reference, current)
    ref, cur = (
        f["label"].to_numpy(dtype=object)[np.unique(lesion_groups(f), return_index=True)[1]]
        for f in (reference, current)
    )
    return pool.tag(class_mix_test(ref, cur, permutations, seed, unit=pool.unit))


def _chi_square(tables: np.ndarray) -> np.ndarray:
    """Pearson's statistic of each 2 x K table in `tables` [N, 2, K] (empty columns skipped)."""
    expected = tables.sum(axis=2, keepdims=True) * tables.sum(axis=1, keepdims=True)
    expected = expected / tables.sum(axis=(1, 2), keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(expected > 0, (tables - expected) ** 2 / expected, 0.0)
    return terms.sum(axis=(1, 2))


def property_tests(
    reference: pd.DataFrame, current: pd.DataFrame, permutations: int = 2000, seed: int = 0
) -> list[Check]:
    """Two-sample Kolmogorov-Smirnov test per image property (PROPERTIES columns). Photos of one
    lesion (`lesion_id`) are alike, so when a lesion has several, the p-value comes from
    permutations of whole lesions between the sides; with one image per group, scipy's."""
    from scipy import stats

    pool = Pool.of_frames(reference, current)
    shuffles = pool.shuffles(permutations, seed) if pool.grouped else None
    out = []
    for name in PROPERTIES:
        a, b = reference[name].to_numpy(float), current[name].to_numpy(float)
        detail = f"median {np.median(a):.4g} → {np.median(b):.4g}"
        if shuffles is None:
            res = stats.ks_2samp(a, b)
            statistic, p_value = float(res.statistic), float(res.pvalue)
        else:
            statistic, p_value = _ks_permutation(np.concatenate([a, b]), pool, shuffles)
            detail += f"; permutation p over {pool.unit} ({permutations})"
        out.append(pool.tag(Check(f"property:{name}", statistic, p_value, detail=detail)))
    return out


def _ks_permutation(values: np.ndarray, pool: Pool, shuffles: np.ndarray) -> tuple[float, float]:
    """KS statistic of the pooled `values` (reference first) and its p-value over `shuffles`
    of whole groups, (1 + #>=) / (1 + permutations); ECDFs compared after each run of ties."""
    order = np.argsort(values, kind="stable")
    ends = np.flatnonzero(np.r_[np.diff(values[order]) != 0, True])
    codes = pool.codes[order]
    observed = float(_ks(pool.first[codes][None, :], ends)[0])
    step = max(1, CELLS // len(values))
    hits = sum(
        int((_ks(shuffles[i : i + step][:, codes], ends) >= observed - 1e-12).sum())
        for i in range(0, len(shuffles), step)
    )
    return observed, (1 + hits) / (1 + len(shuffles))


def _ks(first: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """KS statistic of each row of `first` [P, N] (True: reference) over sorted values."""
    n1 = first.sum(axis=1, keepdims=True)
    c1 = np.cumsum(first, axis=1, dtype=np.int32)[:, ends]
    c2 = (ends + 1)[None, :] - c1
    return np.abs(c1 / n1 - c2 / (first.shape[1] - n1)).max(axis=1)


def _sq_dists(z: np.ndarray) -> np.ndarray:
    sq = (z * z).sum(axis=1)
    return np.maximum(sq[:, None] + sq[None, :] - 2.0 * z @ z.T, 0.0)


def _mmd2(kg: np.ndarray, first: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Unbiased MMD² for each column of `first` [groups, P] (True: the group is in the first
    sample), from `kg`, the kernel summed over the image pairs of every two groups (pairs within
    one group left out), and each group's size: all permutations in one product."""
    a = first.astype(np.float64)
    b = 1.0 - a
    n, m = sizes @ a, sizes @ b
    ka = kg @ a
    kb = kg.sum(axis=1)[:, None] - ka  # kg @ b, as b = 1 - a
    xx = (a * ka).sum(axis=0) / (n * n - (sizes * sizes) @ a)  # ordered pairs across groups
    yy = (b * kb).sum(axis=0) / (m * m - (sizes * sizes) @ b)
    return xx + yy - 2.0 * (b * ka).sum(axis=0) / (n * m)


def mmd_test(
    x: np.ndarray,
    y: np.ndarray,
    permutations: int = 2000,
    seed: int = 0,
    groups: tuple[np.ndarray, np.ndarray] | None = None,
) -> Check:
    """MMD² of the standardised features with an RBF kernel (bandwidth: the median pairwise
    squared distance) and a permutation p-value, (1 + #{permuted ≥ observed}) / (1 +
    permutations): exact under no drift, never below 1 / (1 + permutations). With `groups` (each
    side's lesion codes) pairs of photos of one lesion are left out of the statistic and whole
    lesions are permuted: alike photos of one lesion say nothing about drift."""
    unit = "images" if groups is None else "lesions"
    pool = Pool.of(*(groups or (np.arange(len(x)), np.arange(len(y)))), unit)
    if min(pool.groups) < 2:
        raise DriftError(
            f"MMD needs two or more {pool.unit} per side, got {pool.groups[0]} and"
            f" {pool.groups[1]}: sample more images (drift.sample)"
        )
    z = np.vstack([x, y]).astype(np.float64)
    z = (z - z.mean(axis=0)) / (z.std(axis=0) + 1e-8)  # pooled, so permutations stay exact
    d2 = _sq_dists(z)
    positive = d2[np.triu_indices(len(z), 1)]
    positive = positive[positive > 0]
    k = np.exp(-d2 / (float(np.median(positive)) if len(positive) else 1.0))
    k[pool.codes[:, None] == pool.codes[None, :]] = 0.0  # a photo with itself or its lesion
    member = np.zeros((len(z), len(pool.first)))
    member[np.arange(len(z)), pool.codes] = 1.0
    kg, sizes = member.T @ k @ member, member.sum(axis=0)
    observed = float(_mmd2(kg, pool.first[:, None], sizes)[0])
    shuffles = pool.shuffles(permutations, seed)
    hits = sum(
        int((_mmd2(kg, chunk.T, sizes) >= observed).sum())
        for chunk in np.array_split(shuffles, max(1, permutations // 250))
    )
    p = (1 + hits) / (1 + permutations)
    detail = f"{len(x)} vs {len(y)} embeddings"
    if pool.unit == "lesions":
        detail += f" of {pool.groups[0]} vs {pool.groups[1]} lesions"
    return pool.tag(Check("embedding_mmd", observed, p, detail=detail))


def combine(checks: list[Check], alpha: float) -> list[Check]:
    """Holm across every check: each gets its adjusted p-value and its verdict at alpha."""
    if not checks:
        return []
    adjusted = holm([c.p_value for c in checks])
    return [
        replace(c, p_adjusted=float(a), drifted=bool(a < alpha))
        for c, a in zip(checks, adjusted, strict=True)
    ]


# --------------------------------------------------------------------------- images


def sample_rows(rows: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """At most n rows, drawn without replacement (the same rows for the same seed)."""
    if len(rows) <= n:
        return rows.reset_index(drop=True)
    return rows.sample(n=n, random_state=seed).reset_index(drop=True)


def image_properties(data: bytes) -> tuple[dict[str, float], np.ndarray]:
    """Width, height (as stored), mean luminance, its spread (contrast) and channel means."""
    width, height = Image.open(io.BytesIO(data)).size
    small = decode(data, THUMB).astype(np.float32)
    luma = small @ _LUMA
    red, green, blue = small.reshape(-1, 3).mean(axis=0)
    props = {
        "width": float(width),
        "height": float(height),
        "brightness": float(luma.mean()),
        "contrast": float(luma.std()),
        "red": float(red),
        "green": float(green),
        "blue": float(blue),
    }
    return props, small


def read_sample(
    rows: pd.DataFrame, cache_root: str | Path, size: int | None = None
) -> tuple[pd.DataFrame, np.ndarray | None]:
    """Properties of every row's image (columns `key` + PROPERTIES [+ `lesion_id`]) and, with
    `size`, the images decoded at that side for embeddings. Rows need key, fingerprint and
    source; unreadable images are left out, with a warning."""
    fetcher = Fetcher(objects_dir(cache_root))
    props: dict[int, dict[str, float]] = {}
    pixels: dict[int, np.ndarray] = {}
    for row, got in fetch_rows(rows, fetcher):
        if got.path is None:
            log.warning("drift: cannot fetch %s: %s", rows["key"].iloc[row], got.error)
            continue
        data = got.path.read_bytes()
        try:
            props[row], _ = image_properties(data)
            if size:
                pixels[row] = decode(data, size)
        except ImageDecodeError as err:
            log.warning("drift: cannot decode %s: %s", rows["key"].iloc[row], err)
    order = sorted(props)
    frame = pd.DataFrame([props[i] for i in order], columns=list(PROPERTIES))
    frame.insert(0, "key", rows["key"].to_numpy()[order])
    if "lesion_id" in rows.columns:  # photos of one lesion are tested together
        frame["lesion_id"] = rows["lesion_id"].to_numpy()[order]
    return frame, (np.stack([pixels[i] for i in order]) if size and order else None)


def embed(model: Any, images: np.ndarray, spec: Any, batch_size: int = 64) -> np.ndarray:
    """Pooled backbone features of uint8 images (N, S, S, 3) decoded at `spec.cache_size`."""
    import torch

    # torch, timm, torchvision behind these: only when embeddings are compared (drift.embeddings)
    from skin.train.datasets import Normalize
    from skin.train.model import pooled_features  # (the same: torch, only for embeddings)

    device = next(model.parameters()).device
    prep = Normalize(spec).to(device)
    model.eval()
    chunks = []
    for start in range(0, len(images), batch_size):
        crop = centre_crop(images[start : start + batch_size], spec.size)
        x = torch.from_numpy(np.ascontiguousarray(crop)).permute(0, 3, 1, 2).to(device)
        chunks.append(pooled_features(model, prep(x)).float().cpu().numpy())
    return np.concatenate(chunks)


# --------------------------------------------------------------------------- rows to compare


def current_rows(listing: pd.DataFrame, reference: pd.DataFrame, which: str) -> pd.DataFrame:
    """The current images to test: all of them, or those the reference does not hold (a key it
    lacks, or a key whose content changed)."""
    if which == "all":
        return listing
    known = set(zip(reference["key"], reference["fingerprint"].astype(str), strict=True))
    pairs = zip(listing["key"], listing["fingerprint"].astype(str), strict=True)
    return listing[[pair not in known for pair in pairs]]


def new_fraction(listing: pd.DataFrame, reference: pd.DataFrame) -> float:
    """Share of the current images the reference manifest does not hold."""
    if not len(listing):
        return 0.0
    return len(current_rows(listing, reference, "new")) / len(listing)


def reference_rows(manifest: pd.DataFrame) -> pd.DataFrame:
    """The champion's train and dev rows, undersampled ones included: undersampling is the
    pipeline's choice, not a property of the data."""
    return manifest[manifest["split"].isin(REFERENCE_SPLITS)].reset_index(drop=True)


# --------------------------------------------------------------------------- the check


@dataclass(frozen=True)
class DriftParams:
    """The drift section as explicit values."""

    current: str = "new"
    sample: int = 300
    min_images: int = 10
    alpha: float = 0.01
    permutations: int = 2000
    embeddings: bool = True
    seed: int = 0


def drift_params(section: Any) -> DriftParams:
    """`config.drift` turned into DriftParams (same field names)."""
    return DriftParams(**{k: getattr(section, k) for k in DriftParams.__dataclass_fields__})


def check_drift(
    manifest: pd.DataFrame,
    listing: pd.DataFrame,
    params: DriftParams,
    cache_root: str | Path,
    *,
    model: Any = None,
    spec: Any = None,
    names: tuple[str, str] = ("reference", "current"),
) -> DriftReport:
    """Compare the current images (`listing` rows: key, label, fingerprint, source) with the
    reference manifest's train and dev rows; "new" images are those the whole manifest lacks.
    Embeddings only when a `model` (and its input `spec`) is given."""
    reference = reference_rows(manifest)
    current = current_rows(listing, manifest, params.current)
    report = empty_report(reference, current, params, names)
    if len(current) < params.min_images:
        report.note = (
            f"{len(current)} current images ({params.current}), fewer than drift.min_images"
            f" {params.min_images}"
        )
        return report
    size = spec.cache_size if model is not None else None
    ref_props, ref_px = read_sample(
        sample_rows(reference, params.sample, params.seed), cache_root, size
    )
    cur_props, cur_px = read_sample(
        sample_rows(current, params.sample, params.seed + 1), cache_root, size
    )
    if len(ref_props) < 2 or len(cur_props) < 2:
        raise DriftError(
            f"too few readable images: {len(ref_props)} reference, {len(cur_props)} current"
        )
    x = y = None
    if model is not None:
        x, y = embed(model, ref_px, spec), embed(model, cur_px, spec)
    return judge(Side(reference, ref_props, x), Side(current, cur_props, y), params, names)


@dataclass(frozen=True)
class Side:
    """One side of the comparison: all its rows (label[, lesion_id]), the properties of the
    sample read from them (PROPERTIES[, lesion_id]) and, when a model ran, their embeddings."""

    rows: pd.DataFrame
    props: pd.DataFrame
    embeddings: np.ndarray | None = None


def judge(
    reference: Side,
    current: Side,
    params: DriftParams,
    names: tuple[str, str] = ("reference", "current"),
) -> DriftReport:
    """Every check of current against reference, Holm-combined into one report (pure). Lesions
    are the units: each check exchanges whole lesions between the sides under its null."""
    report = empty_report(reference.rows, current.rows, params, names)
    checks = [
        class_mix_by_lesion(reference.rows, current.rows, params.permutations, params.seed),
        *property_tests(reference.props, current.props, params.permutations, params.seed),
    ]
    if reference.embeddings is not None and current.embeddings is not None:
        lesions = has_lesion_ids(reference.props) or has_lesion_ids(current.props)
        groups = (lesion_groups(reference.props), lesion_groups(current.props))
        x, y = reference.embeddings, current.embeddings
        checks.append(mmd_test(x, y, params.permutations, params.seed, groups if lesions else None))
    report.checks = combine(checks, params.alpha)
    return report


def empty_report(
    reference: pd.DataFrame, current: pd.DataFrame, params: DriftParams, names: tuple[str, str]
) -> DriftReport:
    """The report's header: both sides' sizes, the unit of the tests and its groups per side."""
    pool = Pool.of_frames(reference, current)
    unit_note = ""
    if pool.unit == "lesions" and not has_lesion_ids(current):
        unit_note = (
            "the current images carry no lesion ids: each is its own group (repeat photos of"
            " one lesion among them would count as independent)"
        )
    return DriftReport(
        names[0],
        names[1],
        len(reference),
        len(current),
        params.alpha,
        unit=pool.unit,
        groups_reference=pool.groups[0],
        groups_current=pool.groups[1],
        unit_note=unit_note,
    )


@dataclass(frozen=True)
class Reference:
    """What the current data is compared with: a manifest and, for embeddings, a checkpoint."""

    label: str  # what the user named: models:/…@champion, a run id, a manifest URI
    manifest_uri: str
    manifest_hash: str
    checkpoint: str | None = None
    checkpoint_sha: str | None = None
    run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_reference(
    against: ModelRef | str, tracking_uri: str | None, dst: Path, *, checkpoint: bool = True
) -> Reference:
    """A registered model (`models:/NAME@ALIAS`, `models:/NAME/VERSION`), a run (`runs:/ID/…` or
    a bare run id) or a manifest file: its manifest, and the model's checkpoint when there is one."""
    ref = as_model_ref(against)
    against = str(ref)  # the label: what the user named, as given
    if not ref.is_mlflow:  # a file: the manifest itself
        return Reference(against, against, mf.manifest_hash(mf.read(against)))
    registry = MLflowRegistry(tracking_uri)
    run_id = registry.source_run(ref)
    manifest_uri = registry.run_manifest(run_id, dst / "manifest")
    digest = mf.manifest_hash(mf.read(manifest_uri))
    if not checkpoint:
        return Reference(against, manifest_uri, digest, run_id=run_id)
    found = registry.checkpoint(ref, dst / "checkpoint")
    sha = found.sha256 or sha256_of(found.path)
    return Reference(against, manifest_uri, digest, str(found.path), sha, run_id)


def backbone(
    checkpoint: str | None, model: Any, image_size: int | None, n_classes: int
) -> tuple[Any, Any]:
    """(network, input spec) whose pooled features are compared: the reference model's own
    checkpoint when there is one, else the configured model (`model`: config.model), seeded."""
    import torch

    # torch, timm, torchvision behind these: only when embeddings are compared (drift.embeddings)
    from skin.train.loop import pick_device
    from skin.train.model import (  # (the same: torch, only for embeddings)
        build_model,
        input_spec,
        load_model_from_checkpoint,
    )

    device = pick_device("auto")
    if checkpoint and Path(checkpoint).name == "members.json":  # an ensemble: its first member
        first = json.loads(Path(checkpoint).read_text())["members"][0]["checkpoint"]
        checkpoint = str(Path(checkpoint).parent / first)
    if checkpoint:
        net, state = load_model_from_checkpoint(checkpoint, device)
        size = (state.get("config") or {}).get("train", {}).get("image_size")
        return net, input_spec(net, size)
    torch.manual_seed(0)  # a random backbone (pretrained off) is the same network every time
    net = build_model(model.name, n_classes, pretrained=model.pretrained, weights=model.weights)
    return net.to(device).eval(), input_spec(net, image_size)


def sha256_of(path: Path) -> str:

    return sha256_file(path)


# --------------------------------------------------------------------------- chart


def chart_png(report: DriftReport, path: Path) -> Path:
    """One bar per check: -log10 of its Holm-adjusted p-value against the alpha line."""
    plt = pyplot()
    table = report.table()
    fig, ax = plt.subplots(figsize=(8, 0.45 * max(len(table), 2) + 1.5))
    if len(table):
        score = -np.log10(table["p_adjusted"].clip(lower=1e-300).to_numpy(float))
        colours = ["tab:red" if d else "tab:blue" for d in table["drifted"]]
        ax.barh(table["check"], score, color=colours)
        ax.axvline(-np.log10(report.alpha), color="black", linestyle="--", label="alpha")
        ax.invert_yaxis()
        ax.legend(loc="lower right")
    ax.set_xlabel("-log10 Holm-adjusted p-value (right of the line: drift)")
    ax.set_title(report.verdict(), fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(report: DriftReport, folder: Path) -> dict[str, Path]:
    """The report as files a person opens: the table (CSV), the chart (PNG), the summary (MD)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "table": folder / "drift_report.csv",
        "chart": folder / "drift_report.png",
        "summary": folder / "drift_report.md",
    }
    report.table().to_csv(files["table"], index=False)
    chart_png(report, files["chart"])
    files["summary"].write_text(report.markdown() + "\n")
    return files
