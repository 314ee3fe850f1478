"""The registered model as MLflow serves it: images in (base64 bytes or a URI), diagnoses out.

Imported only to log or serve a model (it subclasses MLflow's PythonModel). The weights travel
inside the model as the training checkpoint, loaded with weights_only=True; preprocessing and
the forward pass are `Predictor`'s, the one path `skin predict` and evaluation share.

Models are logged from code (`MODEL_CODE`, which names only `skin.serve.SkinModel`), not
pickled: models pickled before 2026-12 name `skin.serving.SkinModel`, which stays importable.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from skin.data.images import ImageDecodeError
from skin.data.storage import read_uri
from skin.serve.loading import load_predictor
from skin.serve.predict import Predictor
from skin.track.tracking import (
    CHECKPOINT_ARTIFACT,
    CHECKPOINT_SHA_TAG,
    CHECKPOINT_TAG,
    ENSEMBLE_MODEL_TAG,
    Tracker,
    logged_model_id,
    sha256_file,
)

# Artifact names inside the logged model (MLflow stores each under `artifacts/<file name>`).
CHECKPOINT = "checkpoint"
CALIBRATION = "calibration"  # the evaluate stage's report/calibration.json: {"temperature": T}
OPERATING_POINTS = "operating_points"  # report/operating_points.json: {"mel_threshold_at_…": t}
ABSTENTION = "abstention"  # report/abstention.json: {"score": kind, "threshold": t, …}
REPORT_FILES = (CALIBRATION, OPERATING_POINTS, ABSTENTION)  # travel with the model
MEL_THRESHOLD = "mel_threshold_at_spec90"
MEMBERS = "members"  # an ensemble's members.json; its members in member_<i>/ beside it
INPUTS = ("image", "uri")
# The models-from-code file MLflow copies into each logged model and runs to load it.
MODEL_CODE = Path(__file__).with_name("skin_model.py")


@dataclass(frozen=True)
class Served:
    """What a loaded model answers with: the predictor (with its temperature) and MEL threshold."""

    predictor: Predictor
    mel_threshold: float | None = None


def load_served(artifacts: Mapping[str, str], device: str = "auto") -> Served:
    """The model from its artifacts: the checkpoint (with the calibration MLflow keeps beside
    it, which `load_predictor` applies as `skin predict` does), or an ensemble's members.json
    (each member with its own calibration), and the operating points if any."""
    predictor = load_predictor(artifacts.get(CHECKPOINT) or artifacts[MEMBERS], device)
    threshold = mel_threshold(_read_json(artifacts.get(OPERATING_POINTS)))
    return Served(predictor, threshold)


def mel_threshold(points: Mapping[str, Any]) -> float | None:
    """The MEL threshold at 90 % specificity, else at the lowest target stored, else None."""
    found = {k: v for k, v in points.items() if k.startswith("mel_threshold_at_spec")}
    key = MEL_THRESHOLD if MEL_THRESHOLD in found else min(found, default=None)
    return None if key is None else float(found[key])


def _read_json(path: str | None) -> dict[str, Any]:
    return json.loads(Path(path).read_text()) if path else {}


def row_bytes(frame: pd.DataFrame, i: int) -> bytes:
    """Row i's image: its base64 `image`, or the file its `uri` names (s3:// or a local path)."""
    image, uri = (_cell(frame, column, i) for column in INPUTS)
    if image and uri:
        raise ImageDecodeError(f"row {i}: give `image` or `uri`, not both")
    if image:
        try:
            return base64.b64decode("".join(image.split()), validate=True)
        except (binascii.Error, ValueError) as err:
            raise ImageDecodeError(f"row {i}: `image` is not base64: {err}") from err
    if uri:
        return read_uri(uri)
    raise ImageDecodeError(f"row {i}: neither `image` (base64 bytes) nor `uri` is given")


def _cell(frame: pd.DataFrame, column: str, i: int) -> str | None:
    value = frame[column].iloc[i] if column in frame.columns else None
    return value if isinstance(value, str) and value.strip() else None


def predict_frame(served: Served, frame: pd.DataFrame, *, tta: bool = False) -> pd.DataFrame:
    """One row per input: p_<CLASS>…, label, confidence, melanoma_suspected (with a threshold),
    ood_score and abstained (with an abstention rule: label UNK past its threshold) and error;
    a row that fails has its error and NaN probabilities, the others their answer."""
    predictor = served.predictor.using(tta=tta)
    keys = [str(i) for i in range(len(frame))]
    scored = predictor.score(keys, lambda key: row_bytes(frame, int(key)))
    out = pd.DataFrame({f"p_{c}": scored[f"prob_{c}"].to_numpy() for c in predictor.classes})
    out["label"] = _nullable(scored["predicted_label"])
    out["confidence"] = scored["probability"]
    if served.mel_threshold is not None and "p_MEL" in out.columns:
        suspected = out["p_MEL"] >= served.mel_threshold
        out["melanoma_suspected"] = suspected.astype(object).where(out["p_MEL"].notna(), None)
    if "ood_score" in scored.columns:
        out["ood_score"] = scored["ood_score"]
        out["abstained"] = scored["abstained"]
    out["error"] = _nullable(scored["error"])
    return out


def _nullable(column: pd.Series) -> pd.Series:
    """Strings or None (JSON null), not pandas' NaN-filled string dtype."""
    return column.astype(object).where(column.notna(), None)


class SkinModel(mlflow.pyfunc.PythonModel):
    """The image-in pyfunc: `image` (base64) or `uri` columns in, our classes' answer out."""

    def load_context(self, context: Any) -> None:
        self.served = load_served(context.artifacts)

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        tta = bool((params or {}).get("tta", False))
        frame = pd.DataFrame(model_input)
        out = predict_frame(self.served, frame, tta=tta)
        if (params or {}).get("explain"):  # opt-in: without it, the answer is unchanged
            maps = explanation_column(self.served, frame, out, tta=tta)
            out["explanation"] = pd.Series(maps, index=out.index, dtype=object)  # None: JSON null
        return out


def explanation_column(
    served: Served, frame: pd.DataFrame, answered: pd.DataFrame, *, tta: bool = False
) -> list[str | None]:
    """Each answered row's class-activation map for its answer, as a base64 PNG of the overlay
    (`skin.serve.explain`); None where the row failed."""
    from skin.serve import explain  # grad-cam and OpenCV: loaded only when a map is asked for

    good = [i for i, error in enumerate(answered["error"]) if not isinstance(error, str)]
    column: list[str | None] = [None] * len(frame)
    if good:
        predictor = served.predictor.using(tta=tta)
        maps = explain.explain_images(predictor, [row_bytes(frame, i) for i in good])
        for j, i in enumerate(good):
            column[i] = explain.overlay_base64(maps.images[j], maps.cams[j])
    return column


def signature() -> Any:
    """Inputs `image` and `uri` (strings, each optional), output columns, params `tta` and
    `explain` (adds the `explanation` column)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema([ColSpec("string", name, required=False) for name in INPUTS])
    params = ParamSchema(
        [ParamSpec("tta", "boolean", False), ParamSpec("explain", "boolean", False)]
    )
    return ModelSignature(inputs=inputs, params=params)


def example_frame(size: int = 32) -> pd.DataFrame:
    """A small real PNG (a brown disc on skin tone) as base64: the model's input example."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), (224, 172, 150))
    ImageDraw.Draw(img).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), (110, 70, 50))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return pd.DataFrame({"image": [base64.b64encode(buf.getvalue()).decode("ascii")]})


def artifacts_of(checkpoint: Path, report: Path | None) -> dict[str, str]:
    """The model's artifacts: the checkpoint, and report/calibration.json,
    report/operating_points.json and report/abstention.json where the evaluate stage wrote them."""
    out = {CHECKPOINT: str(checkpoint)}
    for name in REPORT_FILES:
        path = report / f"{name}.json" if report else None
        if path is not None and path.is_file():
            out[name] = str(path)
    return out


def ensemble_artifacts_of(members: Path, report: Path | None) -> dict[str, str]:
    """An ensemble's artifacts: members.json, every member_<i>/ folder beside it, and
    report/operating_points.json and report/abstention.json (its UNK rule, stored beside
    members.json in the model) where the ensemble's evaluation wrote them."""
    folders = sorted(members.parent.glob("member_*"), key=lambda p: int(p.name.split("_")[1]))
    out = {MEMBERS: str(members), **{p.name: str(p) for p in folders}}
    for name in (OPERATING_POINTS, ABSTENTION):
        path = report / f"{name}.json" if report else None
        if path is not None and path.is_file():
            out[name] = str(path)
    return out


def log_model(tracker: Tracker, checkpoint: Path, registered_name: str | None = None) -> str | None:
    """Log the image-in pyfunc (`SkinModel` from code, name "model") made from `checkpoint` into
    the tracker's run: the exact weights (and their hash) travel inside the model's artifacts, with
    the run's report/calibration.json, operating_points.json and abstention.json where they
    exist. None where the tracker records no models."""
    with tempfile.TemporaryDirectory(prefix="skin-model-") as tmp:
        copy = Path(tmp) / Path(CHECKPOINT_ARTIFACT).name  # hash the bytes uploaded
        shutil.copyfile(checkpoint, copy)
        report = Path(tmp) / "report"
        report.mkdir()
        tracker.fetch_report(REPORT_FILES, report)
        tags = {CHECKPOINT_TAG: CHECKPOINT_ARTIFACT, CHECKPOINT_SHA_TAG: sha256_file(copy)}
        return tracker.log_pyfunc(
            str(MODEL_CODE), artifacts_of(copy, report), tags, signature(), example_frame(),
            registered_name,
        )  # fmt: skip


def log_ensemble(
    tracker: Tracker, members: Path, report: Path | None, registered_name: str | None = None
) -> str | None:
    """Log an ensemble as the same image-in pyfunc: `members` is the members.json that
    `skin.search.ensemble.write_members` wrote beside the member_<i>/ folders (each a checkpoint with
    its calibration); the file is pinned by sha256 and lists each member's. The run is tagged
    with the model's id, so `runs:/RUN_ID/model` serves the ensemble."""
    tags = {CHECKPOINT_TAG: f"artifacts/{Path(members).name}"}
    tags[CHECKPOINT_SHA_TAG] = sha256_file(Path(members))
    uri = tracker.log_pyfunc(
        str(MODEL_CODE), ensemble_artifacts_of(Path(members), report), tags, signature(),
        example_frame(), registered_name,
    )  # fmt: skip
    if uri is not None:
        tracker.set_tags({ENSEMBLE_MODEL_TAG: logged_model_id(uri) or uri})
    return uri
