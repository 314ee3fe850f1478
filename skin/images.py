"""Decode one image safely and fast: DCT-domain downscale, EXIF orientation, any mode to RGB."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 90_000_000  # ISIC's largest photos are ~24 MP; far beyond that is a decompression bomb


class ImageDecodeError(ValueError):
    """The bytes are not a usable image; the message says why (truncated, bomb, not an image)."""


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float32)
        hi = float(arr.max()) or 1.0
        img = Image.fromarray((arr * (255.0 / hi)).clip(0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB") if img.mode != "RGB" else img


def decode(data: bytes, size: int) -> np.ndarray:
    """Bytes → uint8 array (size, size, 3): short side resized to `size`, centre-cropped square.

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
            img = ImageOps.exif_transpose(img)
            img = _to_rgb(img)
            w, h = img.size
            scale = size / min(w, h)
            new = (max(size, round(w * scale)), max(size, round(h * scale)))
            img = img.resize(new, Image.Resampling.BICUBIC, reducing_gap=3.0)
            left, top = (new[0] - size) // 2, (new[1] - size) // 2
            img = img.crop((left, top, left + size, top + size))
            return np.asarray(img, dtype=np.uint8)
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
