"""Synthetic ISIC-like dermoscopy images: a fast, seeded stand-in dataset for demos and tests."""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

from skin.base.labels import CLASSES, ISIC2019_COUNTS

__all__ = [
    "LesionParams",
    "SampleImage",
    "ViewParams",
    "class_counts",
    "encode_jpeg",
    "iter_sample_images",
    "render",
    "render_lesion",
    "sample_lesion",
    "sample_view",
]

RGB = tuple[float, float, float]

_ID_SPACE = 10_000_000  # 7-digit ids, as in ISIC_0000123 / HAM_0001234
_NOISE_GRID = 16  # side of the periodic random grids that textures are sampled from


@dataclass(frozen=True)
class _ClassStyle:
    """How one class looks: the knobs that make classes separable (colour, shape, texture)."""

    colour: RGB  # main lesion colour
    secondary: RGB  # colour of the texture marks (network lines, speckles, vessels, ...)
    shape: str  # round | oval | blob | ring | dots
    texture: str  # smooth | speckled | streaked | network
    radius: tuple[float, float]  # lesion radius as a fraction of the image side
    aspect: tuple[float, float]  # minor/major axis ratio
    edge: float  # width of the soft border, in lesion radii
    opacity: tuple[float, float]  # how strongly the lesion covers the skin
    centre: RGB | None = None  # colour of a central patch (DF scar, SCC keratin)
    tertiary: RGB | None = None  # blotchy extra colour (MEL blue-grey veil)


# Confusable pairs share features on purpose: MEL/NV are brown with a network, BCC/BKL are oval,
# AK/SCC are red. Each pair still differs in at least two of colour, shape and texture.
# fmt: off
_STYLES: dict[str, _ClassStyle] = {
    #                   colour              secondary           shape    texture     radius        aspect        edge  opacity       centre / tertiary
    "AK":   _ClassStyle((0.80, 0.47, 0.44), (0.96, 0.92, 0.88), "blob",  "speckled", (0.24, 0.36), (0.70, 1.00), 0.35, (0.55, 0.80)),
    "BCC":  _ClassStyle((0.86, 0.66, 0.66), (0.66, 0.10, 0.16), "oval",  "streaked", (0.22, 0.34), (0.50, 0.75), 0.20, (0.80, 0.95)),
    "BKL":  _ClassStyle((0.66, 0.48, 0.30), (0.90, 0.84, 0.62), "oval",  "speckled", (0.22, 0.34), (0.55, 0.80), 0.08, (0.80, 0.95)),
    "DF":   _ClassStyle((0.55, 0.36, 0.28), (0.45, 0.29, 0.22), "ring",  "smooth",   (0.20, 0.30), (0.80, 1.00), 0.30, (0.75, 0.90), centre=(0.95, 0.91, 0.87)),
    "MEL":  _ClassStyle((0.33, 0.20, 0.15), (0.12, 0.07, 0.06), "blob",  "network",  (0.26, 0.38), (0.65, 1.00), 0.12, (0.85, 1.00), tertiary=(0.36, 0.40, 0.55)),
    "NV":   _ClassStyle((0.52, 0.34, 0.23), (0.30, 0.17, 0.10), "round", "network",  (0.18, 0.28), (0.85, 1.00), 0.18, (0.80, 0.95)),
    "SCC":  _ClassStyle((0.82, 0.40, 0.38), (0.62, 0.10, 0.14), "round", "streaked", (0.22, 0.32), (0.80, 1.00), 0.15, (0.80, 0.95), centre=(0.93, 0.86, 0.58)),
    "VASC": _ClassStyle((0.64, 0.12, 0.26), (0.38, 0.06, 0.24), "dots",  "smooth",   (0.22, 0.34), (0.70, 1.00), 0.25, (0.85, 1.00)),
}
# fmt: on


@dataclass(frozen=True)
class LesionParams:
    """Intrinsic properties of one lesion (and its patient's skin), shared by all its photos."""

    label: str
    skin: RGB
    colour: RGB
    secondary: RGB
    radius: float
    aspect: float
    orientation: float
    opacity: float
    harmonics: tuple[tuple[float, float], ...]  # (amplitude, phase) of boundary k = 2, 3, ...
    dots: tuple[tuple[float, float, float], ...]  # (u, v, radius) in lesion units, shape "dots"
    texture_freq: float
    texture_warp: float
    texture_seed: int


@dataclass(frozen=True)
class ViewParams:
    """How one photo of a lesion was taken: framing, lighting and acquisition noise."""

    cx: float
    cy: float
    rotation: float
    zoom: float
    gain: float
    tint: RGB
    noise_sigma: float
    hairs: int
    vignette: float


@dataclass(frozen=True)
class SampleImage:
    """One generated dataset row: what a loader would read from the ISIC CSV plus the JPEG."""

    label: str
    image_id: str
    data: bytes
    lesion_id: str


def _jitter_colour(rgb: RGB, rng: np.random.Generator, sigma: float) -> RGB:
    """Multiplicative per-channel and brightness jitter, so colour alone is a noisy cue."""
    gain = math.exp(rng.normal(0.0, sigma))
    c = np.asarray(rgb) * gain * np.exp(rng.normal(0.0, sigma * 0.6, 3))
    r, g, b = (float(x) for x in np.clip(c, 0.02, 1.0))
    return (r, g, b)


def _skin_tone(rng: np.random.Generator) -> RGB:
    """A patient skin tone between fair and darker, with a little hue variation."""
    fair, dark = np.array([0.96, 0.80, 0.72]), np.array([0.68, 0.48, 0.36])
    t = rng.beta(1.6, 2.4)
    c = (1 - t) * fair + t * dark + rng.normal(0.0, 0.025, 3)
    r, g, b = (float(x) for x in np.clip(c, 0.05, 1.0))
    return (r, g, b)


def sample_lesion(label: str, rng: np.random.Generator) -> LesionParams:
    """Draw a new lesion of `label`; re-rendering it under new views gives repeat photos."""
    if label not in _STYLES:
        raise ValueError(f"unknown label {label!r}; expected one of {CLASSES}")
    st = _STYLES[label]
    n_harm = 4
    amp = 0.22 if st.shape == "blob" else 0.03
    harmonics = tuple(
        (float(rng.uniform(0.3, 1.0) * amp / (k * 0.5)), float(rng.uniform(0, 2 * math.pi)))
        for k in range(2, 2 + n_harm)
    )
    dots: tuple[tuple[float, float, float], ...] = ()
    if st.shape == "dots":
        n = int(rng.integers(3, 8))
        ang = rng.uniform(0, 2 * math.pi, n)
        rad = np.sqrt(rng.uniform(0, 1, n)) * 0.75
        dots = tuple(
            (float(r * math.cos(a)), float(r * math.sin(a)), float(rng.uniform(0.22, 0.4)))
            for a, r in zip(ang, rad, strict=True)
        )
    irregular = label == "MEL"
    return LesionParams(
        label=label,
        skin=_skin_tone(rng),
        colour=_jitter_colour(st.colour, rng, 0.1),
        secondary=_jitter_colour(st.secondary, rng, 0.1),
        radius=float(rng.uniform(*st.radius)),
        aspect=float(rng.uniform(*st.aspect)),
        orientation=float(rng.uniform(0, 2 * math.pi)),
        opacity=float(rng.uniform(*st.opacity)),
        harmonics=harmonics,
        dots=dots,
        texture_freq=float(rng.uniform(4.0, 7.0) if irregular else rng.uniform(6.0, 8.0)),
        texture_warp=float(rng.uniform(1.5, 2.5) if irregular else rng.uniform(0.2, 0.6)),
        texture_seed=int(rng.integers(0, 2**31)),
    )


def sample_view(rng: np.random.Generator, base: ViewParams | None = None) -> ViewParams:
    """A fresh framing, or (given `base`) a small change of it, as a second photo would be."""
    if base is not None:
        return replace(
            base,
            cx=float(np.clip(base.cx + rng.normal(0, 0.03), 0.3, 0.7)),
            cy=float(np.clip(base.cy + rng.normal(0, 0.03), 0.3, 0.7)),
            rotation=base.rotation + float(rng.normal(0, 0.25)),
            zoom=base.zoom * float(np.exp(rng.normal(0, 0.05))),
            gain=base.gain * float(np.exp(rng.normal(0, 0.04))),
            noise_sigma=float(rng.uniform(2.0, 7.0)),
            hairs=base.hairs if rng.random() < 0.7 else int(rng.integers(0, 4)),
        )
    tint = np.exp(rng.normal(0, 0.04, 3))
    return ViewParams(
        cx=float(rng.uniform(0.38, 0.62)),
        cy=float(rng.uniform(0.38, 0.62)),
        rotation=float(rng.uniform(0, 2 * math.pi)),
        zoom=float(np.exp(rng.normal(0, 0.12))),
        gain=float(np.exp(rng.normal(0, 0.08))),
        tint=(float(tint[0]), float(tint[1]), float(tint[2])),
        noise_sigma=float(rng.uniform(2.0, 7.0)),
        hairs=int(rng.integers(1, 5)) if rng.random() < 0.3 else 0,
        vignette=float(rng.uniform(0.2, 0.6)) if rng.random() < 0.3 else 0.0,
    )


@functools.lru_cache(maxsize=16)
def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [0, 1], cached per canvas size (read-only)."""
    c = (np.arange(n, dtype=np.float32) + 0.5) / n
    x, y = np.meshgrid(c, c)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _value_noise(grid: np.ndarray, u: np.ndarray, v: np.ndarray, scale: float) -> np.ndarray:
    """Bilinear samples of a periodic random grid: smooth noise attached to lesion coordinates."""
    g = grid.shape[0]  # a power of two, so wrapping is a bitwise and
    mask = g - 1
    x = u * np.float32(scale)
    y = v * np.float32(scale)
    xf = np.floor(x)
    yf = np.floor(y)
    fx = x - xf
    fy = y - yf
    x0 = xf.astype(np.int32) & mask
    y0 = (yf.astype(np.int32) & mask) * g
    x1 = (x0 + 1) & mask
    y1 = (y0 + g) & (g * g - 1)
    flat = grid.ravel()
    top = flat.take(y0 + x0)
    top += (flat.take(y0 + x1) - top) * fx
    bottom = flat.take(y1 + x0)
    bottom += (flat.take(y1 + x1) - bottom) * fx
    top += (bottom - top) * fy
    return top


def _smoothstep(lo: float, hi: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _shape_alpha(
    p: LesionParams, st: _ClassStyle, u: np.ndarray, v: np.ndarray, rho: np.ndarray
) -> np.ndarray:
    """Coverage in [0, 1] of the lesion outline, with a soft border `st.edge` radii wide."""
    if st.shape == "dots":
        d = np.full(u.shape, -np.inf, dtype=np.float32)
        for du, dv, dr in p.dots:
            d = np.maximum(d, (dr - np.hypot(u - du, v - dv)) / dr)
        return np.clip(d / st.edge, 0.0, 1.0)
    boundary: np.ndarray | float = 1.0
    if st.shape == "blob":
        phi = np.arctan2(v, u)
        boundary = 1.0 + sum(a * np.cos(k * phi + ph) for k, (a, ph) in enumerate(p.harmonics, 2))
    return np.clip((boundary - rho) / st.edge, 0.0, 1.0)


def _texture(
    p: LesionParams, st: _ClassStyle, u: np.ndarray, v: np.ndarray, grids: np.ndarray
) -> np.ndarray:
    """Where the secondary colour shows, in [0, 1]: speckles, streaks or a pigment network."""
    f, w = p.texture_freq, p.texture_warp
    if st.texture == "speckled":
        n = _value_noise(grids[0], u, v, 4.0 * f / 6.0)
        return _smoothstep(0.66, 0.8, n)
    if st.texture == "streaked":
        warp = _value_noise(grids[1], u, v, 1.5)
        s = np.cos(f * 1.3 * u + 0.6 * v + 5.0 * warp)
        return _smoothstep(0.7, 0.95, s) * _smoothstep(0.25, 0.5, _value_noise(grids[0], u, v, 2))
    if st.texture == "network":
        wu = w * (_value_noise(grids[1], u, v, 1.5) - 0.5)
        wv = w * (_value_noise(grids[2], u, v, 1.5) - 0.5)
        a = np.abs(np.sin(f * u + 3.0 * wu))
        b = np.abs(np.sin(f * v + 3.0 * wv))
        lines = _smoothstep(0.45, 0.15, np.minimum(a, b))
        # an atypical network is broken up; a typical one fades smoothly towards the border
        keep = _smoothstep(0.35, 0.55, _value_noise(grids[0], u, v, 1.2)) if w > 1.0 else 1.0
        return lines * keep
    return 0.25 * _value_noise(grids[0], u, v, 1.5)


def render(p: LesionParams, view: ViewParams, size: int, rng: np.random.Generator) -> Image.Image:
    """Draw one photo of lesion `p` under `view` at 2x and downsample; `rng` adds pixel noise."""
    st = _STYLES[p.label]
    n = 2 * size
    x, y = _grid(n)
    grids = np.random.default_rng(p.texture_seed).random((3, _NOISE_GRID, _NOISE_GRID))
    grids = grids.astype(np.float32)

    # skin: patient tone, blotchy low-frequency shading and an optional dark scope vignette
    mottling = _value_noise(rng.random((8, 8)).astype(np.float32), x, y, 4.0) - 0.5
    shade = 1.0 + 0.12 * mottling
    if view.vignette > 0:
        r_img = np.hypot(x - 0.5, y - 0.5)
        shade = shade * (1.0 - view.vignette * _smoothstep(0.42, 0.62, r_img))

    # lesion frame: u, v in lesion radii, rotated by the lesion's orientation and the view's
    r = p.radius * view.zoom
    ang = p.orientation + view.rotation
    ca, sa = math.cos(ang), math.sin(ang)
    dx, dy = x - view.cx, y - view.cy
    u = (dx * ca + dy * sa) / r
    v = (-dx * sa + dy * ca) / (r * p.aspect)
    rho = np.hypot(u, v)

    # Every pixel is a mix of a few flat colours; build the 2-D mixing weights, then one matmul
    # makes the RGB canvas (much cheaper than blending 3-channel arrays step by step).
    alpha = _shape_alpha(p, st, u, v, rho) * np.float32(p.opacity)
    tex = _texture(p, st, u, v, grids)
    # darker, denser pigment towards the centre, as in most pigmented lesions
    centre_dark = 1.0 - 0.18 * np.clip(1.0 - rho, 0.0, 1.0)
    weights = [shade * (1 - alpha), centre_dark * (1 - tex), tex]
    colours = [p.skin, p.colour, p.secondary]
    if st.tertiary is not None:
        veil = 0.8 * _smoothstep(0.6, 0.8, _value_noise(grids[2], u, v, 1.0))
        weights[1:] = [w * (1 - veil) for w in weights[1:]]
        weights.append(veil)
        colours.append(st.tertiary)
    if st.centre is not None:
        inner = 0.65 if st.shape == "ring" else 0.45
        c = _smoothstep(inner, inner * 0.5, rho)
        weights[1:] = [w * (1 - c) for w in weights[1:]]
        weights.append(c)
        colours.append(st.centre)
    weights[1:] = [w * alpha for w in weights[1:]]
    light = 255.0 * view.gain * np.asarray(view.tint)
    palette = (np.asarray(colours) * light).astype(np.float32)
    img = np.stack(weights, axis=-1).reshape(n * n, -1) @ palette

    canvas = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8).reshape(n, n, 3), "RGB")
    if view.hairs:
        _draw_hairs(canvas, view.hairs, rng)
    small = canvas.resize((size, size), Image.Resampling.LANCZOS)
    arr = np.asarray(small, dtype=np.float32) + rng.normal(0.0, view.noise_sigma, (size, size, 3))
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "RGB")


def _draw_hairs(canvas: Image.Image, count: int, rng: np.random.Generator) -> None:
    """Thin dark curved lines across the field, as body hair in real dermoscopy."""
    n = canvas.width
    draw = ImageDraw.Draw(canvas)
    t = np.linspace(0.0, 1.0, 8)[:, None]
    for _ in range(count):
        p0 = rng.uniform(-0.1, 1.1, 2) * n
        direction = rng.uniform(0, 2 * math.pi)
        length = rng.uniform(0.5, 1.2) * n
        p2 = p0 + length * np.array([math.cos(direction), math.sin(direction)])
        p1 = (p0 + p2) / 2 + rng.normal(0, 0.12 * n, 2)
        pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
        tone = int(rng.uniform(20, 70))
        width = max(1, round(n / 64 * rng.uniform(0.6, 1.4)))
        draw.line([tuple(q) for q in pts.tolist()], fill=(tone, tone - 8, tone - 12), width=width)


def render_lesion(label: str, rng: np.random.Generator, size: int = 64) -> Image.Image:
    """One RGB image of a new lesion of class `label`, `size` x `size` pixels."""
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    params = sample_lesion(label, rng)
    return render(params, sample_view(rng), size, rng)


def encode_jpeg(img: Image.Image, quality: int = 90) -> bytes:
    """JPEG bytes, the format ISIC ships, so loaders see real compression artefacts."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def class_counts(
    per_class: int | None = None, total: int | None = None, minimum: int = 3
) -> dict[str, int]:
    """Images per class: balanced (`per_class`) or `total` split in ISIC 2019 proportions.

    The proportional split uses largest-remainder rounding, so it sums to `total` exactly and
    `total=25331` reproduces ISIC 2019; rare classes are lifted to `minimum` so that every class
    can be split into train/val/test.
    """
    if (per_class is None) == (total is None):
        raise ValueError("give exactly one of per_class= or total=")
    if per_class is not None:
        if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
            raise ValueError(f"per_class must be a positive integer, got {per_class!r}")
        return dict.fromkeys(CLASSES, per_class)
    if isinstance(total, bool) or not isinstance(total, int):
        raise ValueError(f"total must be an integer, got {total!r}")
    if minimum < 0:
        raise ValueError(f"minimum must be >= 0, got {minimum}")
    if total < minimum * len(CLASSES) or total < 1:
        raise ValueError(
            f"total={total} is too small: {len(CLASSES)} classes need at least {minimum} each"
        )
    fixed: dict[str, int] = {}
    while True:
        free = [c for c in CLASSES if c not in fixed]
        budget = total - sum(fixed.values())
        weight = sum(ISIC2019_COUNTS[c] for c in free)
        quotas = {c: budget * ISIC2019_COUNTS[c] / weight for c in free}
        low = [c for c in free if quotas[c] < minimum]
        if not low:
            break
        fixed.update(dict.fromkeys(low, minimum))
    counts = {c: math.floor(q) for c, q in quotas.items()}
    left = budget - sum(counts.values())
    # largest remainder first; ties go to the more common class, then to CLASSES order
    order = sorted(free, key=lambda c: (-(quotas[c] - counts[c]), -ISIC2019_COUNTS[c]))
    for c in order[:left]:
        counts[c] += 1
    counts.update(fixed)
    return {c: counts[c] for c in CLASSES}


def iter_sample_images(
    counts: dict[str, int],
    size: int,
    seed: int,
    repeat_fraction: float = 0.2,
    duplicate_fraction: float = 0.0,
    quality: int = 90,
) -> Iterator[SampleImage]:
    """Yield a deterministic synthetic dataset with `counts[label]` JPEGs per class, mixed order.

    Like HAM10000, an image is with probability `repeat_fraction` a second photo of the previous
    lesion of its class (same lesion_id, slightly different view). A `duplicate_fraction` of each
    class are byte-identical copies of an earlier image under a new image_id and a new lesion_id,
    the cross-release leakage trap that only content hashing catches.
    """
    unknown = set(counts) - set(CLASSES)
    if unknown:
        raise ValueError(f"unknown labels {sorted(unknown)}; expected a subset of {CLASSES}")
    for label, n in counts.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"count for {label} must be a non-negative integer, got {n!r}")
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    if not 0.0 <= repeat_fraction < 1.0:
        raise ValueError(f"repeat_fraction must be in [0, 1), got {repeat_fraction}")
    if not 0.0 <= duplicate_fraction < 1.0:
        raise ValueError(f"duplicate_fraction must be in [0, 1), got {duplicate_fraction}")
    labels = [c for c in CLASSES if counts.get(c, 0) > 0]
    total = sum(counts[c] for c in labels)
    if total > _ID_SPACE // 2:
        raise ValueError(f"at most {_ID_SPACE // 2} images, got {total}")

    rng = np.random.default_rng(seed)
    image_ids = rng.choice(_ID_SPACE, size=total, replace=False)
    lesion_ids = rng.choice(_ID_SPACE, size=total, replace=False)
    order = rng.permutation(np.repeat(np.arange(len(labels)), [counts[c] for c in labels]))
    duplicate_slots: dict[str, set[int]] = {}
    for c in labels:
        n_dup = min(counts[c] - 1, math.floor(duplicate_fraction * counts[c] + 0.5))
        picks = rng.choice(np.arange(1, counts[c]), size=n_dup, replace=False) if n_dup else []
        duplicate_slots[c] = {int(i) for i in picks}

    seen: dict[str, int] = dict.fromkeys(labels, 0)
    last: dict[str, tuple[LesionParams, ViewParams, str]] = {}
    originals: dict[str, list[bytes]] = {c: [] for c in labels}
    next_lesion = 0
    for i, k in enumerate(order):
        label = labels[int(k)]
        image_id = f"ISIC_{int(image_ids[i]):07d}"
        slot = seen[label]
        seen[label] += 1
        if slot in duplicate_slots[label]:
            pool = originals[label]
            data = pool[int(rng.integers(len(pool)))]
            lesion_id = f"HAM_{int(lesion_ids[next_lesion]):07d}"
            next_lesion += 1
            yield SampleImage(label=label, image_id=image_id, data=data, lesion_id=lesion_id)
            continue
        if label in last and rng.random() < repeat_fraction:
            params, prev_view, lesion_id = last[label]
            view = sample_view(rng, prev_view)
        else:
            params, view = sample_lesion(label, rng), sample_view(rng)
            lesion_id = f"HAM_{int(lesion_ids[next_lesion]):07d}"
            next_lesion += 1
        last[label] = (params, view, lesion_id)
        data = encode_jpeg(render(params, view, size, rng), quality=quality)
        if duplicate_slots[label]:
            originals[label].append(data)
        yield SampleImage(label=label, image_id=image_id, data=data, lesion_id=lesion_id)
