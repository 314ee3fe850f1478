"""Image files: which names are images, a safe fast decode (DCT downscale, EXIF, RGB), the crop."""

from __future__ import annotations

import io
import warnings
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")  # what listing and prediction take for an image
MAX_PIXELS = 90_000_000  # ISIC's largest photos are ~24 MP; far beyond that is a decompression bomb
_ORIENTATION = 0x0112  # EXIF tag; 1 = upright, anything else needs a transpose


class ImageDecodeError(ValueError):
    """The bytes are not a usable image; the message says why (truncated, bomb, not an image)."""


def is_image_name(name: str) -> bool:
    """Whether a file name, key or URI names an image, by its suffix in any case."""
    return PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES


_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I")  # 16-bit grey (Pillow opens some as 32-bit I)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in _SIXTEEN_BIT:  # a fixed scale (65535 → 255), never the image's own maximum
        arr = np.asarray(img, dtype=np.float32) / 257.0
        img = Image.fromarray(np.rint(arr).clip(0, 255).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB") if img.mode != "RGB" else img


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation only when there is one (exif_transpose always copies)."""
    if img.getexif().get(_ORIENTATION, 1) != 1:
        return ImageOps.exif_transpose(img)
    return img


def _square(img: Image.Image, size: int) -> np.ndarray:
    """Centre square of the image, resampled to size × size in one pass (no resize-then-crop)."""
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) / 2, (h - side) / 2
    box = (left, top, left + side, top + side)
    out = img.resize((size, size), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)
    return np.asarray(out, dtype=np.uint8)


def decode(data: bytes, size: int) -> np.ndarray:
    """Bytes → uint8 array (size, size, 3): the centre square, its side resampled to `size`.

    JPEGs are downscaled in the DCT domain first (Pillow's draft), which is several times faster
    than decoding at full resolution for ISIC's large photos.
    """
    if not data:
        raise ImageDecodeError("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise ImageDecodeError(f"{w}x{h} pixels: over the {MAX_PIXELS:,} limit (bomb?)")
            if img.format == "JPEG":
                img.draft("RGB", (size, size))
            return _square(_to_rgb(_upright(img)), size)
    except ImageDecodeError:
        raise
    except (
        UnidentifiedImageError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as err:
        raise ImageDecodeError(f"not a usable image: {err}") from err
    except (OSError, ValueError, SyntaxError) as err:
        raise ImageDecodeError(f"corrupt or truncated image: {err}") from err


def decode_file(path: str | Path, size: int) -> np.ndarray:
    """`decode` for a file on disk (a fetch-cache entry or a local dataset file)."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise ImageDecodeError(f"cannot read {path}: {err}") from err
    return decode(data, size)


def centre_crop(images: np.ndarray, size: int) -> np.ndarray:
    """The evaluation crop: [..., S, S, 3] → [..., size, size, 3] around the centre (a view)."""
    o = (images.shape[-2] - size) // 2
    return images[..., o : o + size, o : o + size, :]
