"""Contact sheets: one thumbnail per tile in a grid, captions under them, unreadable ones grey."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from skin.data.sheets import CAPTION, contact_sheet


def test_tiles_fill_a_grid_in_order_and_unreadable_ones_are_grey() -> None:
    red = np.zeros((20, 20, 3), np.uint8)
    red[..., 0] = 255
    png = contact_sheet([(red, "a\ngiven MEL"), (None, "gone"), (red, "c")], columns=2, side=32)
    sheet = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert sheet.shape == (2 * (32 + CAPTION), 64, 3)
    assert tuple(sheet[10, 10]) == (255, 0, 0) and tuple(sheet[10, 42]) == (200, 200, 200)
    assert tuple(sheet[32 + CAPTION + 10, 10]) == (255, 0, 0), "the third tile starts row two"
