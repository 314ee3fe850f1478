"""The batch-prediction flow: every image under a folder gets a row of one table, an image that
does not decode gets its error, the counts come back, and an existing output is never replaced."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from flows.predict import predict_flow
from skin.base.labels import CLASSES

pytestmark = pytest.mark.server  # a Prefect flow on the session's ephemeral API

# A tiny random-weight model as skin saves checkpoints (the from-code fixture's own weights).
CHECKPOINT = Path(__file__).parents[1] / "fixtures" / "code_model" / "artifacts" / "checkpoint.pt"


def _images(folder: Path) -> Path:
    folder.mkdir()
    for i, colour in enumerate([(200, 150, 130), (90, 50, 40), (150, 60, 70)]):
        buf = io.BytesIO()
        Image.new("RGB", (40, 30), colour).save(buf, format="PNG" if i else "JPEG")
        (folder / f"lesion_{i}.{'png' if i else 'jpg'}").write_bytes(buf.getvalue())
    (folder / "broken.jpg").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("not an image file: not listed")
    return folder


def test_every_image_gets_a_row_and_the_counts_come_back(tmp_path: Path, prefect_api) -> None:
    folder, out = _images(tmp_path / "images"), tmp_path / "out" / "predictions.parquet"
    result = predict_flow(str(folder), str(CHECKPOINT), str(out))
    assert (result["images"], result["predicted"], result["errors"]) == (4, 3, 1), result
    assert sum(result["counts"].values()) == 3 and set(result["counts"]) <= set(CLASSES), result
    assert result["output"] == str(out) and result["model_ref"] == str(CHECKPOINT), result
    assert not result["abstains"] and result["abstained"] == 0, "the model stores no UNK rule"
    table = pd.read_parquet(out)
    assert len(table) == 4 and table["error"].notna().sum() == 1, table
    broken = table[table["error"].notna()]
    assert broken["key"].str.endswith("broken.jpg").all(), broken


def test_an_existing_output_is_refused_and_kept(tmp_path: Path, prefect_api) -> None:
    folder, out = _images(tmp_path / "images"), tmp_path / "predictions.parquet"
    out.write_bytes(b"an earlier table")
    with pytest.raises(Exception, match="exists"):
        predict_flow(str(folder), str(CHECKPOINT), str(out))
    assert out.read_bytes() == b"an earlier table", "the earlier output is untouched"
