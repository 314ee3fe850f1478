"""Unusable images: each kind flagged by the measure that catches it, ordinary images left alone."""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter

from skin.data.quality import QualityLimits, flag, measure
from skin.data.synthetic import render_lesion


def _row(key: str, img: Image.Image, size: tuple[int, int] | None = None) -> dict:
    square = np.asarray(img.convert("RGB").resize((128, 128)))
    return {"key": key, **measure(square, *(size or img.size))}


def test_each_kind_of_unusable_image_is_flagged_by_its_own_measure() -> None:
    rng = np.random.default_rng(0)
    rows = [_row(f"ok{i}", render_lesion("NV", rng, size=128)) for i in range(12)]
    blurred = render_lesion("MEL", rng, size=128).filter(ImageFilter.GaussianBlur(12))
    rows += [
        _row("black", Image.new("RGB", (128, 128), (4, 3, 5))),
        _row("white", Image.new("RGB", (128, 128), (252, 251, 250))),
        _row("flat", Image.new("RGB", (128, 128), (120, 90, 80))),
        _row("tiny", render_lesion("NV", rng, size=128), size=(40, 30)),
        _row("blurred", blurred),
    ]
    flags = flag(pd.DataFrame(rows), QualityLimits())
    reasons = flags.groupby("key")["reason"].agg(set).to_dict()
    assert not any(k.startswith("ok") for k in reasons), f"ordinary images flagged: {reasons}"
    assert "almost black" in reasons["black"] and "almost white" in reasons["white"]
    assert "near-constant" in reasons["flat"] and reasons["tiny"] == {"tiny"}
    assert reasons["blurred"] == {"heavily blurred"}, reasons["blurred"]
    row = flags[flags["key"] == "tiny"].iloc[0]
    assert (row["value"], row["limit"]) == (30.0, 64.0), "the flag names the measure and the limit"
