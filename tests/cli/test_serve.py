"""`skin explain` and `skin predict --explain`: a map per image, the answer beside it, refusals by
name, nothing overwritten (the maps themselves: tests/serve/test_explain.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from PIL import Image

from tests.helpers import invoke
from tests.serve.test_predict import abstaining_run


def test_explain_writes_a_map_per_image_with_its_answer_and_refuses_to_overwrite(
    tmp_path: Path,
) -> None:
    run = abstaining_run(tmp_path)
    paths = [str(run.images / k) for k in run.keys[:3]]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    out = tmp_path / "maps"
    code, text = invoke("--json", "explain", *paths, str(broken), "--model", str(run.checkpoint),
                        "--out", str(out))  # fmt: skip
    assert code == 1, "an unreadable image fails the command, after the others are mapped"
    rows = json.loads(text)["images"]
    assert [r["image"] for r in rows] == [*paths, str(broken)]
    assert rows[-1]["error"] and rows[-1]["file"] is None
    for row in rows[:-1]:
        assert row["explained"] == row["answer"] or row["answer"] == "UNK", row
        with Image.open(row["file"]) as png:
            assert png.format == "PNG" and png.width > 300, row
    assert sorted(p.name for p in out.iterdir()) == [f"lesion_{i}.cam.png" for i in range(3)]

    before = {p: p.read_bytes() for p in out.iterdir()}
    code, text = invoke("explain", paths[0], "--model", str(run.checkpoint), "--out", str(out),
                        "--class", "MEL")  # fmt: skip
    assert code == 1 and "already exists" in text, text
    assert {p: p.read_bytes() for p in out.iterdir()} == before, "nothing overwritten"


def test_explain_maps_a_named_class_and_refuses_an_unknown_one_or_layer(tmp_path: Path) -> None:
    run = abstaining_run(tmp_path)
    paths = [str(run.images / k) for k in run.keys[:2]]
    model = ("--model", str(run.checkpoint))
    code, text = invoke("--json", "explain", *paths, *model, "--class", "MEL", "--out",
                        str(tmp_path / "a"), "--method", "eigencam")  # fmt: skip
    assert code == 0, text
    doc = json.loads(text)
    assert doc["method"] == "eigencam" and {r["explained"] for r in doc["images"]} == {"MEL"}
    code, text = invoke("explain", *paths, *model, "--class", "XYZ", "--out", str(tmp_path / "b"))
    assert code == 1 and "'XYZ' is not one of" in text and "MEL" in text, text
    code, text = invoke("explain", *paths, *model, "--target-layer", "layer9", "--out",
                        str(tmp_path / "c"))  # fmt: skip
    assert code == 1 and "'layer9' is not a layer" in text, text
    code, text = invoke("explain", *paths, *model, "--method", "lime")
    assert code == 1 and "explain.method" in text, text
    assert not any((tmp_path / d).exists() for d in "bc"), "a refusal writes nothing"


def test_predict_explain_writes_the_maps_beside_the_predictions(tmp_path: Path) -> None:
    run = abstaining_run(tmp_path)
    paths = [str(run.images / k) for k in run.keys[:2]]
    table, maps = tmp_path / "p.csv", tmp_path / "maps"
    code, text = invoke("--json", "predict", *paths, "--model", str(run.checkpoint), "--out",
                        str(table), "--explain", str(maps))  # fmt: skip
    assert code == 0, text
    rows = json.loads(text)["predictions"]
    assert [Path(r["explanation"]).name for r in rows] == ["lesion_0.cam.png", "lesion_1.cam.png"]
    assert sorted(p.name for p in maps.iterdir()) == ["lesion_0.cam.png", "lesion_1.cam.png"]
    written = table.read_text().splitlines()[0].split(",")
    assert "explanation_file" in written and "predicted_label" in written, written


def test_predict_explain_on_a_folder_maps_every_image_and_writes_the_table_beside_them(
    tmp_path: Path,
) -> None:
    run = abstaining_run(tmp_path)
    before = {p: p.read_bytes() for p in run.images.rglob("*") if p.is_file()}
    maps = tmp_path / "maps"
    code, text = invoke("--json", "predict", str(run.images), "--model", str(run.checkpoint),
                        "--explain", str(maps))  # fmt: skip
    assert code == 0, text
    doc = json.loads(text)
    assert doc["images"] == len(run.keys) == len(list(maps.iterdir())), doc
    assert doc["explanations"] == str(maps) and sum(doc["counts"].values()) == len(run.keys)
    written = pd.read_parquet(doc["output"])
    assert Path(doc["output"]).parent == run.images / "predictions", "where the batch flow writes"
    assert written["explanation_file"].map(lambda f: Path(f).exists()).all()
    after = {p: p.read_bytes() for p in before}
    assert after == before, "the inputs are only read"
    code, text = invoke("predict", str(run.images), "--model", str(run.checkpoint), "--explain",
                        str(maps))  # fmt: skip
    assert code == 1 and "already exists" in text, "a second run overwrites no map"
