"""Decoding one image: every pixel format lands on the same 8-bit scale."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from skin.data.images import _to_rgb, centre_crop, decode, is_image_name


def encoded(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def dim_picture() -> np.ndarray:
    """A dim grayscale gradient (max 160, not 255): per-image scaling would brighten it."""
    rng = np.random.default_rng(4)
    ramp = np.linspace(20, 160, 48 * 40).reshape(48, 40)
    return (ramp + rng.integers(-15, 15, ramp.shape)).clip(0, 255).astype(np.uint8)


def sixteen_bit(pixels: np.ndarray, mode: str) -> Image.Image:
    """The same picture at 16 bits in `mode` (v·257 maps 0..255 onto 0..65535 exactly)."""
    wide = pixels.astype(np.uint16) * np.uint16(257)
    h, w = pixels.shape
    if mode == "I":
        return Image.fromarray(wide.astype(np.int32))
    order = ">u2" if mode == "I;16B" else "<u2"
    return Image.frombytes(mode, (w, h), wide.astype(order).tobytes())


def assert_same(wide: np.ndarray, eight: np.ndarray, what: str) -> None:
    diff = np.abs(wide.astype(int) - eight.astype(int))
    assert diff.max() <= 1, (
        f"{what}: mean {wide.mean():.1f} vs 8-bit {eight.mean():.1f}, max diff {diff.max()}"
    )


@pytest.mark.parametrize(("mode", "fmt"), [("I;16", "PNG"), ("I;16B", "TIFF"), ("I", "TIFF")])
def test_a_16_bit_grayscale_file_decodes_like_its_8_bit_twin(mode: str, fmt: str) -> None:
    pixels = dim_picture()
    eight = decode(encoded(Image.fromarray(pixels)), 32)
    data = encoded(sixteen_bit(pixels, mode), fmt)
    assert Image.open(io.BytesIO(data)).mode == mode, "the file keeps its 16-bit mode"
    assert_same(decode(data, 32), eight, f"{mode} {fmt}")


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L", "I"])
def test_every_16_bit_mode_is_scaled_by_257(mode: str) -> None:
    pixels = dim_picture()
    img = sixteen_bit(pixels, mode)
    assert img.mode == mode
    rgb = np.asarray(_to_rgb(img))
    assert rgb.shape == (*pixels.shape, 3)
    assert_same(rgb, np.repeat(pixels[..., None], 3, axis=2), mode)


@pytest.mark.parametrize(("side", "size"), [(8, 4), (9, 4), (8, 8)])
def test_the_centre_crop_is_the_same_for_one_image_and_a_batch(side: int, size: int) -> None:
    batch = np.random.default_rng(side).integers(0, 256, (3, side, side, 3), dtype=np.uint8)
    crops = centre_crop(batch, size)
    o = (side - size) // 2
    assert crops.shape == (3, size, size, 3)
    assert np.array_equal(crops, batch[:, o : o + size, o : o + size]), "the middle of each"
    for image, crop in zip(batch, crops, strict=True):
        assert np.array_equal(centre_crop(image, size), crop), "one image as in a batch"


def test_image_names_are_known_by_suffix_in_any_case() -> None:
    for name in ("a/ISIC_1.jpg", "b.JPEG", "s3://bucket/x/c.Png"):
        assert is_image_name(name), name
    for name in ("a/ISIC_1.jpg.txt", "ISIC_2019_Training_GroundTruth.csv", "s3://bucket/x", "jpg"):
        assert not is_image_name(name), name
