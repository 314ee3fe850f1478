"""The image-in pyfunc: logged with its weights, it answers as `skin predict` does, row by row."""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skin.base.labels import CLASSES
from skin.serve import pyfunc as serving
from skin.serve.loading import load_predictor
from skin.serve.predict import Predictor
from skin.serve.pyfunc import mel_threshold
from tests.helpers import tracking_db
from tests.recipes import TINY

ATOL = 1e-5


def tiny_checkpoint(folder: Path, seed: int = 0) -> Path:
    """A random-weight TINY model saved as skin saves checkpoints."""
    import timm
    import torch

    from skin.base.config import load_config
    from skin.train import checkpoint as ckpt

    torch.manual_seed(seed)
    model = timm.create_model(TINY["model.name"], pretrained=False, num_classes=len(CLASSES))
    cfg = load_config(None, dict(TINY)).model_dump(mode="json")
    state = {"model": model.state_dict(), "config": cfg, "classes": list(CLASSES)}
    return ckpt.save(folder, 1, state, is_best=True, keep=None)


def encoded(fmt: str, seed: int, size: tuple[int, int] = (61, 47)) -> bytes:
    """A real image file (JPEG or PNG) of random-ish content, not square."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True)
class Logged:
    uri: str  # the tracking store
    model_uri: str
    checkpoint: Path


def log_run(tmp: Path, report: dict[str, dict] | None = None) -> Logged:
    """A run that logged the report files given, then the model (as the evaluate stage does)."""
    from skin.track.tracking import MLflowTracker, tracked_run

    uri = tracking_db(tmp)
    checkpoint = tiny_checkpoint(tmp / "checkpoints")
    tracker = MLflowTracker(uri, "serving")
    with tracked_run(tracker):
        if report:
            folder = tmp / "logged-report"  # not the run folder's report/: only MLflow has it
            folder.mkdir()
            for name, content in report.items():
                (folder / name).write_text(json.dumps(content))
            tracker.log_artifact(folder, "report")
        model_uri = serving.log_model(tracker, checkpoint)
    assert model_uri is not None
    return Logged(uri, model_uri, checkpoint)


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Logged:
    return log_run(tmp_path_factory.mktemp("serving"))


def load(logged: Logged):
    import mlflow.pyfunc

    mlflow.set_tracking_uri(logged.uri)
    return mlflow.pyfunc.load_model(logged.model_uri)


def probs_of(frame: pd.DataFrame) -> np.ndarray:
    return frame[[f"p_{c}" for c in CLASSES]].to_numpy(dtype=np.float64)


def test_the_served_model_answers_as_skin_predict_does(logged: Logged, tmp_path: Path) -> None:
    images = [encoded("JPEG", 1), encoded("PNG", 2), encoded("JPEG", 3)]
    on_disk = tmp_path / "lesion.png"
    on_disk.write_bytes(images[1])
    frame = pd.DataFrame(
        {"image": [b64(images[0]), b64(images[1]), None], "uri": [None, None, str(on_disk)]}
    )
    out = load(logged).predict(frame)
    expected = load_predictor(str(logged.checkpoint), "cpu").predict(
        [images[0], images[1], images[1]]
    )
    assert len(out) == 3, out
    assert out["error"].isna().all(), out["error"].tolist()
    np.testing.assert_allclose(probs_of(out), expected, atol=ATOL)
    assert out["label"].tolist() == [CLASSES[j] for j in expected.argmax(1)], out
    np.testing.assert_allclose(out["confidence"], expected.max(1), atol=ATOL)
    assert "melanoma_suspected" not in out.columns, "no operating points were logged"


def test_a_bad_row_gets_an_error_and_the_others_their_answer(logged: Logged) -> None:
    good = encoded("PNG", 4)
    bad = {
        "not an image": b64(b"hello, this is text"),
        "truncated": b64(encoded("JPEG", 5)[:200]),
        "not base64": "%%% not base64 %%%",
        "nothing": None,
    }
    frame = pd.DataFrame({"image": [b64(good), *bad.values(), b64(good)]})
    out = load(logged).predict(frame)
    assert len(out) == len(frame), "one row per input"
    for i, what in enumerate(bad, start=1):
        assert isinstance(out["error"][i], str) and out["error"][i], f"{what}: {out.iloc[i]}"
        assert np.isnan(probs_of(out)[i]).all(), f"{what}: probabilities must be NaN"
        assert out["label"][i] is None, what
    assert out["error"][[0, 5]].isna().all(), out["error"].tolist()
    np.testing.assert_allclose(probs_of(out)[[0, 5]].sum(1), 1.0, atol=ATOL)


def test_tta_is_a_request_param_that_matches_skin_predict_tta(logged: Logged) -> None:
    images = [encoded("JPEG", 6), encoded("PNG", 7)]
    frame = pd.DataFrame({"image": [b64(b) for b in images]})
    model = load(logged)
    plain, tta = model.predict(frame), model.predict(frame, params={"tta": True})
    predictor = load_predictor(str(logged.checkpoint), "cpu", tta=True)
    np.testing.assert_allclose(probs_of(tta), predictor.predict(images), atol=ATOL)
    assert not np.allclose(probs_of(plain), probs_of(tta), atol=1e-6), "TTA changed nothing"
    np.testing.assert_allclose(probs_of(model.predict(frame)), probs_of(plain), atol=0)


def test_the_signature_takes_image_or_uri_and_a_tta_param(logged: Logged) -> None:
    meta = load(logged).metadata
    inputs = {c["name"]: c for c in meta.get_input_schema().to_dict()}
    assert set(inputs) == {"image", "uri"}, inputs
    assert all(c["type"] == "string" and not c["required"] for c in inputs.values()), inputs
    params = {p.name: p for p in meta.get_params_schema().params}
    assert params["tta"].dtype.name == "boolean" and params["tta"].default is False, params
    assert meta.saved_input_example_info is not None, "the model carries an input example"


def test_calibration_and_operating_points_travel_with_the_model_to_every_path(
    tmp_path: Path,
) -> None:
    report = {
        "calibration.json": {"temperature": 0.05},
        "operating_points.json": {"mel_threshold_at_spec95": 0.2, "mel_threshold_at_spec90": 0.1},
    }
    logged = log_run(tmp_path, report)
    images = [encoded("JPEG", 8), encoded("PNG", 9), encoded("JPEG", 10)]
    out = load(logged).predict(pd.DataFrame({"image": [b64(b) for b in images] + ["x"]}))
    raw = load_predictor(str(logged.checkpoint), "cpu")
    calibrated = Predictor(
        raw.model, raw.spec, raw.classes, raw.device, raw.source, temperature=0.05
    )
    expected = calibrated.predict(images)
    np.testing.assert_allclose(probs_of(out)[:3], expected, atol=ATOL)
    sharpened = np.exp(np.log(raw.predict(images)) / 0.05)
    np.testing.assert_allclose(expected, sharpened / sharpened.sum(1, keepdims=True), atol=1e-4)
    assert not np.allclose(expected, raw.predict(images), atol=1e-3), "T changed nothing"
    registered = load_predictor(logged.model_uri, "cpu", tracking_uri=logged.uri)
    np.testing.assert_allclose(registered.predict(images), expected, atol=ATOL)
    mel = CLASSES.index("MEL")
    assert out["melanoma_suspected"][:3].tolist() == list(expected[:, mel] >= 0.1), out
    assert out["melanoma_suspected"][3] is None, "no answer for a bad row"


def test_the_mel_threshold_is_read_at_90_percent_specificity_or_the_lowest_stored() -> None:
    assert mel_threshold({"mel_threshold_at_spec95": 0.4, "mel_threshold_at_spec90": 0.3}) == 0.3
    assert (
        mel_threshold({"mel_threshold_at_spec95": 0.4, "malignant_threshold_at_spec90": 1}) == 0.4
    )
    assert mel_threshold({"malignant_threshold_at_spec90": 0.2}) is None
    assert mel_threshold({}) is None


def test_a_run_folder_checkpoint_uses_its_runs_calibration(tmp_path: Path) -> None:
    checkpoint = tiny_checkpoint(tmp_path / "run" / "checkpoints")
    image = [encoded("PNG", 11)]
    raw = load_predictor(str(checkpoint), "cpu").predict(image)
    (tmp_path / "run" / "report").mkdir()
    (tmp_path / "run" / "report" / "calibration.json").write_text('{"temperature": 0.05}')
    calibrated = load_predictor(str(checkpoint), "cpu")
    assert calibrated.temperature == 0.05, calibrated.temperature
    assert not np.allclose(calibrated.predict(image), raw, atol=1e-3), "T=0.05 changed nothing"


def raw_ood_scores(checkpoint: Path, images: list[bytes], kind: str) -> np.ndarray:
    """The OOD score of each image by the uncalibrated model (T = 1), as abstention computes it."""
    from skin.stats.abstain import ood_scores

    raw = load_predictor(str(checkpoint), "cpu")
    _, logits = raw.probs_and_logits(np.stack([raw.to_input(b) for b in images]))
    return ood_scores(logits, 1.0, kind)


def test_the_abstention_rule_travels_with_the_model_and_answers_unk_past_its_threshold(
    tmp_path: Path,
) -> None:
    images = [encoded("JPEG", 20 + i) for i in range(6)]
    checkpoint = tiny_checkpoint(tmp_path / "probe" / "checkpoints")
    scores = raw_ood_scores(checkpoint, images, "energy")
    threshold = float(np.median(scores))
    report = {
        "calibration.json": {"temperature": 1.0},
        "abstention.json": {"score": "energy", "threshold": threshold},
    }
    logged = log_run(tmp_path, report)  # same seed: the same weights as the probe
    out = load(logged).predict(pd.DataFrame({"image": [b64(b) for b in images] + ["x"]}))
    past = scores > threshold
    assert 0 < past.sum() < len(images), f"the median splits the images: {scores}"
    np.testing.assert_allclose(out["ood_score"][:6], scores, rtol=1e-4)
    assert out["abstained"][:6].tolist() == past.tolist(), out
    probs = probs_of(out)[:6]
    best = [CLASSES[j] for j in probs.argmax(1)]
    assert out["label"][:6].tolist() == [
        "UNK" if p else b for p, b in zip(past, best, strict=True)
    ], out
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=ATOL)  # the eight probabilities stay
    assert out["abstained"][6] is None and out["label"][6] is None, "no answer for a bad row"
    registered = load_predictor(logged.model_uri, "cpu", tracking_uri=logged.uri)
    assert registered.abstention is not None, "the rule comes with the registered model"
    assert registered.abstention.threshold == threshold, registered.abstention


def test_a_model_without_abstention_answers_one_of_its_classes(logged: Logged) -> None:
    out = load(logged).predict(pd.DataFrame({"image": [b64(encoded("PNG", 30))]}))
    assert "ood_score" not in out.columns and "abstained" not in out.columns, out.columns
    assert out["label"][0] in CLASSES, out


def test_a_logged_model_is_its_code_not_a_pickle(logged: Logged, tmp_path: Path) -> None:
    """Models-from-code: the model holds skin/serve/skin_model.py (which names only the stable
    `skin.serve.SkinModel`) and no pickle of the python model, and still loads and answers."""
    import mlflow.artifacts
    import yaml

    mlflow.set_tracking_uri(logged.uri)
    local = Path(mlflow.artifacts.download_artifacts(logged.model_uri, dst_path=str(tmp_path)))
    pickles = [p.name for p in local.rglob("*") if p.suffix in {".pkl", ".pickle", ".cloudpickle"}]
    assert not pickles, f"the model pickles its python model: {pickles}"
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert "python_model" not in flavor, flavor
    assert Path(flavor["model_code_path"]).name == serving.MODEL_CODE.name, flavor
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model", flavor
    code = (local / serving.MODEL_CODE.name).read_text()
    assert code == serving.MODEL_CODE.read_text(), "the logged code is skin_model.py"
    assert "from skin.serve import SkinModel" in code, code
    images = [encoded("PNG", 11)]
    out = mlflow.pyfunc.load_model(str(local)).predict(pd.DataFrame({"image": [b64(images[0])]}))
    expected = load_predictor(str(logged.checkpoint), "cpu").predict(images)
    np.testing.assert_allclose(probs_of(out), expected, atol=ATOL)


def test_explain_is_a_request_param_that_adds_a_map_to_each_answered_row(logged: Logged) -> None:
    good = encoded("PNG", 8)
    frame = pd.DataFrame({"image": [b64(good), b64(b"not an image"), b64(encoded("JPEG", 9))]})
    model = load(logged)
    plain, explained = model.predict(frame), model.predict(frame, params={"explain": True})
    assert "explanation" not in plain.columns, "without the param, the answer is unchanged"
    same = [c for c in plain.columns if c != "error"]  # an error names a Python object's address
    pd.testing.assert_frame_equal(explained[same], plain[same])
    assert explained["error"].notna().tolist() == [False, True, False], explained["error"]
    assert explained["explanation"][1] is None, "a failed row gets no map"
    size = load_predictor(str(logged.checkpoint), "cpu").spec.size
    for i in (0, 2):
        with Image.open(io.BytesIO(base64.b64decode(explained["explanation"][i]))) as png:
            assert png.format == "PNG" and png.size == (size, size), png
    params = {p.name: p for p in model.metadata.get_params_schema().params}
    assert params["explain"].dtype.name == "boolean" and params["explain"].default is False
