"""Contact sheets: thumbnails in a grid with a caption under each (near-duplicate clusters,
suspect labels), drawn with Pillow alone."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

CAPTION = 24  # pixels of text under each thumbnail (two lines)


def contact_sheet(
    tiles: Sequence[tuple[np.ndarray | None, str]], columns: int = 6, side: int = 96
) -> bytes:
    """PNG bytes: each (image, caption) as a `side` px thumbnail (grey when unreadable)."""
    rows = max(1, -(-len(tiles) // columns))
    sheet = Image.new("RGB", (columns * side, rows * (side + CAPTION)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for n, (pixels, caption) in enumerate(tiles):
        x, y = (n % columns) * side, (n // columns) * (side + CAPTION)
        thumb = (
            Image.fromarray(pixels).resize((side, side))
            if pixels is not None
            else Image.new("RGB", (side, side), (200, 200, 200))
        )
        sheet.paste(thumb, (x, y))
        for line, text in enumerate(caption.split("\n")[:2]):
            draw.text((x + 2, y + side + 1 + 11 * line), text[: side // 6], fill=(0, 0, 0))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()
