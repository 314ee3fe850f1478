"""Predict with a trained model: load it by registry alias, run or checkpoint, and score images."""

from __future__ import annotations

import copy
import json
import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from skin.base.config import PipelineConfig
from skin.base.labels import CLASSES
from skin.data.images import ImageDecodeError, centre_crop, decode, is_image_name
from skin.data.storage import StorageError, exists_uri, is_s3, join_uri, open_store, read_uri
from skin.data.tables import TABLE_SUFFIXES, write_table
from skin.serve.tta import probabilities as tta_probabilities
from skin.serve.tta import view_logits
from skin.stats.abstain import UNK, Abstention, ood_scores, read_abstention
from skin.track.refs import (
    MEMBERS_FILE,  # an ensemble's list of members (skin.search.ensemble)
    CheckpointRef,
    EnsembleRef,
    ModelRef,
    as_model_ref,
)
from skin.track.tracking import MLflowRegistry, TrackingError
from skin.train.datasets import Normalize
from skin.train.loop import amp_dtype
from skin.train.model import InputSpec, input_spec, load_model_from_checkpoint

log = logging.getLogger(__name__)


class PredictError(ValueError):
    """A model reference, input or output location is unusable; says which and how to fix it."""


@dataclass(frozen=True)
class ModelSource:
    """Where the weights came from: the reference as given and what it resolved to."""

    ref: str
    resolved: str
    checkpoint: str
    run_id: str | None = None
    version: str | None = None
    sha256: str | None = None  # of the checkpoint, where a registry version pinned it
    epoch: int = 0  # the checkpoint's, once it is loaded


class Predictor:
    """A model in eval mode with its input spec and classes; turns image bytes into probabilities.

    With an `abstention` rule (abstention.json, stored with the model) `score` also gives each
    image's OOD score and answers UNK past the threshold; `predict` stays probabilities."""

    def __init__(
        self,
        model: torch.nn.Module,
        spec: InputSpec,
        classes: Sequence[str],
        device: torch.device,
        source: ModelSource,
        *,
        tta: bool = False,
        batch_size: int = 64,
        temperature: float = 1.0,
        abstention: Abstention | None = None,
    ) -> None:
        if not temperature > 0:
            raise PredictError(f"temperature must be positive, not {temperature!r}")
        self.model = model.eval()
        self.spec = spec
        self.classes = tuple(classes)
        self.device = device
        self.source = source
        self.tta = tta
        self.batch_size = batch_size
        self.temperature = float(temperature)  # softmax(logits / T): calibration's T, 1 = raw
        self.abstention = abstention  # None: always one of the classes (no abstention.json)
        self._norm = Normalize(spec).to(device)
        self._dtype = amp_dtype(device, True)  # as evaluation: bf16/fp16 on GPU, fp32 on CPU

    def using(self, *, tta: bool) -> Predictor:
        """The same model with TTA on or off: a per-request copy, the shared one is untouched."""
        other = copy.copy(self)
        other.tta = tta
        return other

    def to_input(self, data: bytes) -> np.ndarray:
        """Bytes → uint8 [size, size, 3], exactly as evaluation decodes and crops."""
        return centre_crop(decode(data, self.spec.cache_size), self.spec.size)

    def predict(self, images: Sequence[bytes]) -> np.ndarray:
        """Class probabilities [N, classes]; raises ImageDecodeError on an undecodable image."""
        if not images:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return self.predict_arrays(np.stack([self.to_input(b) for b in images]))

    def predict_arrays(self, images: np.ndarray) -> np.ndarray:
        """Probabilities for decoded, cropped uint8 images [N, size, size, 3], in batches."""
        return self.probs_and_logits(images)[0]

    def probs_and_logits(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated probabilities and the raw mean logits over the TTA views, in batches; one
        definition with evaluation (`skin.serve.tta`): softmax(mean logits / temperature)."""
        batches = range(0, len(images), self.batch_size)
        logits = [self._forward(images[i : i + self.batch_size]) for i in batches]
        z = np.concatenate(logits) if logits else np.zeros((0, len(self.classes)), np.float32)
        return tta_probabilities(z, self.temperature), z

    def ood_scores(self, logits: np.ndarray) -> np.ndarray:
        """The abstention rule's OOD score of these logits (calibrated by this temperature)."""
        if self.abstention is None:
            raise PredictError("this model has no abstention rule (no abstention.json)")
        return ood_scores(logits, self.temperature, self.abstention.kind)

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        """Mean logits over the TTA views of decoded uint8 images [N, size, size, 3]."""
        x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).to(self.device)
        z = view_logits(self.model, x, self._norm, tta=self.tta, dtype=self._dtype)
        return z.cpu().numpy()

    def top_k(self, probs: np.ndarray, k: int = 3) -> list[list[tuple[str, float]]]:
        """The k most likely classes of each row, best first."""
        return top_k(probs, self.classes, k)

    def score(self, keys: Sequence[str], fetch: Callable[[str], bytes]) -> pd.DataFrame:
        """Fetch, decode and predict each key; a key that fails gets a row with its error."""
        rule = self.abstention
        if rule is not None and rule.tta is not None and rule.tta != self.tta:
            log.warning(
                "UNK threshold chosen %s TTA, predicting %s: coverage may differ from its target",
                "with" if rule.tta else "without",
                "with" if self.tta else "without",
            )
        with ThreadPoolExecutor(max_workers=8) as pool:
            loaded = list(pool.map(lambda key: _load(self, fetch, key), keys))
        good = [i for i, (arr, _) in enumerate(loaded) if arr is not None]
        probs = np.full((len(keys), len(self.classes)), np.nan, dtype=np.float32)
        scores = np.full(len(keys), np.nan)
        if good:
            p, z = self.probs_and_logits(np.stack([loaded[i][0] for i in good]))
            probs[good] = p
            if self.abstention is not None:
                scores[good] = self.ood_scores(z)
        errors = [err for _, err in loaded]
        frame = predictions_frame(keys, probs, errors, self.classes, self.source.resolved)
        return frame if self.abstention is None else with_abstention(frame, scores, self.abstention)


def _load(
    predictor: Predictor, fetch: Callable[[str], bytes], key: str
) -> tuple[np.ndarray | None, str | None]:
    try:
        return predictor.to_input(fetch(key)), None
    except (ImageDecodeError, StorageError, OSError) as err:
        return None, f"{type(err).__name__}: {err}"


def top_k(probs: np.ndarray, classes: Sequence[str], k: int = 3) -> list[list[tuple[str, float]]]:
    """The k most likely classes of each row of `probs`, best first."""
    k = max(1, min(k, len(classes)))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [
        [(classes[j], float(row[j])) for j in idx] for row, idx in zip(probs, order, strict=True)
    ]


def predictions_frame(
    keys: Sequence[str],
    probs: np.ndarray,
    errors: Sequence[str | None],
    classes: Sequence[str],
    model: str,
) -> pd.DataFrame:
    """One row per image: key, predicted_label, probability, prob_<CLASS>…, model, error."""
    ok = ~np.isnan(probs).any(axis=1)
    safe = np.where(ok[:, None], probs, -1.0)
    best = safe.argmax(axis=1)
    frame = pd.DataFrame(
        {
            "key": list(keys),
            "predicted_label": [
                classes[j] if good else None for j, good in zip(best, ok, strict=True)
            ],
            "probability": np.where(ok, safe.max(axis=1), np.nan),
        }
    )
    for j, name in enumerate(classes):
        frame[f"prob_{name}"] = probs[:, j]
    frame["model"] = model
    frame["error"] = list(errors)
    return frame


def with_abstention(frame: pd.DataFrame, scores: np.ndarray, rule: Abstention) -> pd.DataFrame:
    """`predicted_label` UNK where the OOD score is past the threshold; `ood_score` and
    `abstained` (None for a failed image) added before `model`; the probabilities are kept."""
    ok = ~np.isnan(scores)
    out = rule.abstains(np.where(ok, scores, -np.inf))
    frame = frame.copy()
    frame.loc[out, "predicted_label"] = UNK
    at = frame.columns.get_loc("model")
    frame.insert(at, "ood_score", scores)
    frame.insert(at + 1, "abstained", pd.Series(out, dtype=object).where(ok, None))
    return frame


# --------------------------------------------------------------------------- loading models


@contextmanager
def resolved_model(
    ref: ModelRef | str, tracking_uri: str | None = None
) -> Iterator[tuple[Path, ModelSource]]:
    """The local file a model reference names, for as long as the block runs: a checkpoint, or an
    ensemble's members.json (`models:/NAME@ALIAS`, `models:/NAME/VERSION`, `models:/m-ID`,
    `runs:/RUN_ID/model`, a bare run id, or a checkpoint path or s3:// URI). MLflow references
    resolve to the checkpoint pinned when the model was logged (`mlflow_checkpoint`)."""
    ref = as_model_ref(ref)
    with tempfile.TemporaryDirectory(prefix="skin-predict-") as tmp:
        yield local_checkpoint(ref, Path(tmp), tracking_uri)


def local_checkpoint(
    ref: ModelRef, dst: Path, tracking_uri: str | None = None
) -> tuple[Path, ModelSource]:
    """The file `ref` names, downloaded under `dst` when it is not local already."""
    match ref:
        case CheckpointRef() | EnsembleRef():
            return _checkpoint_file(ref, dst)
        case _:
            return mlflow_checkpoint(ref, dst, tracking_uri)


def checkpoint_predictor(
    path: Path,
    device: torch.device,
    source: ModelSource,
    *,
    tta: bool = False,
    batch_size: int = 64,
) -> Predictor:
    """A Predictor from one local checkpoint, loaded with weights_only=True (no pickled code
    runs), with the calibration and abstention rule stored beside it. An ensemble's members.json
    is refused here: `skin.serve.loading.load_predictor` loads any model reference."""
    if path.name == MEMBERS_FILE:
        raise PredictError(f"{path} is an ensemble: load it with skin.serve.loading.load_predictor")
    model, state = load_model_from_checkpoint(path, device)
    cfg = PipelineConfig.model_validate(state["config"])
    return Predictor(
        model,
        input_spec(model, cfg.train.image_size),
        state.get("classes") or list(CLASSES),
        device,
        replace(source, epoch=int(state["epoch"])),
        tta=tta,
        batch_size=batch_size,
        temperature=calibrated_temperature(path),
        abstention=stored_abstention(path),
    )


CALIBRATION_FILE = "calibration.json"  # {"temperature": T}, written by the evaluate stage
ABSTENTION_FILE = "abstention.json"  # {"score": kind, "threshold": t, …}, the evaluate stage's


def stored_with(checkpoint: Path, name: str) -> Path | None:
    """The report file `name` stored with a checkpoint: beside it (inside a logged model) or in
    its run folder's report/ (for runs/<id>/checkpoints/*.pt); None when there is none."""
    candidates = [checkpoint.parent / name]
    if checkpoint.parent.name == "checkpoints":
        candidates.append(checkpoint.parent.parent / "report" / name)
    return next((path for path in candidates if path.is_file()), None)


def calibrated_temperature(checkpoint: Path) -> float:
    """The temperature stored with a checkpoint; 1.0 (raw softmax) when there is none."""
    path = stored_with(checkpoint, CALIBRATION_FILE)
    if path is None:
        return 1.0
    try:
        return float(json.loads(path.read_text())["temperature"])
    except (ValueError, KeyError, TypeError) as err:
        raise PredictError(f"{path}: no usable temperature: {err}") from err


def stored_abstention(checkpoint: Path) -> Abstention | None:
    """The UNK rule stored with a checkpoint; None (never abstain) when there is none."""
    path = stored_with(checkpoint, ABSTENTION_FILE)
    if path is None:
        return None
    try:
        return read_abstention(json.loads(path.read_text()), str(path))
    except ValueError as err:  # JSONDecodeError too
        raise PredictError(str(err)) from err


def _checkpoint_file(ref: CheckpointRef | EnsembleRef, tmp: Path) -> tuple[Path, ModelSource]:
    text = str(ref)
    if isinstance(ref, CheckpointRef) and is_s3(text):
        local = tmp / "checkpoint.pt"
        local.write_bytes(read_uri(text))
        return local, ModelSource(text, text, text)
    path = ref.members_file if isinstance(ref, EnsembleRef) else Path(text).expanduser()
    if not path.is_file():
        raise PredictError(
            f"model {text!r} is not a checkpoint file; use models:/NAME@ALIAS, models:/NAME/VERSION,"
            " runs:/RUN_ID/model, or a .pt checkpoint path"
        )
    resolved = str(path.resolve())
    return path, ModelSource(text, resolved, resolved)


def mlflow_checkpoint(
    ref: ModelRef | str, dst: Path, tracking_uri: str | None = None
) -> tuple[Path, ModelSource]:
    """Download the checkpoint an MLflow reference names, through the tracking seam.

    A registry version (or logged model) serves the checkpoint logged inside its model when it
    was evaluated, checked against the sha256 recorded with it: later evaluations of the same
    run cannot change it. `runs:/RUN_ID/model` follows the run's current best epoch.

    Why not `mlflow.pyfunc.load_model`: the logged model (skin.serve.pyfunc) is this same
    checkpoint behind a DataFrame interface, unpickled with cloudpickle; loading the checkpoint
    itself runs no pickled code, and keeps the registry's sha256 check and the run's record.
    """

    ref = as_model_ref(ref)
    try:
        found = MLflowRegistry(tracking_uri).checkpoint(ref, dst)
    except TrackingError as err:
        raise PredictError(str(err)) from err
    source = ModelSource(
        ref.uri, found.resolved, found.artifact, found.run_id, found.version, found.sha256
    )
    return found.path, source


# --------------------------------------------------------------------------- batch prediction


def image_keys(uri: str) -> list[str]:
    """Keys of the .jpg/.jpeg/.png objects under a folder or s3:// prefix, sorted."""
    return sorted(o.key for o in open_store(uri).list() if is_image_name(o.key))


def output_uri(source: str) -> str:
    """The default output: `<source>/predictions/predictions-<UTC time>.parquet` (never an image)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return join_uri(source.removeprefix("file://"), "predictions", f"predictions-{stamp}.parquet")


def check_output(uri: str) -> None:
    """Refuse an output that is not .parquet/.csv or that already exists (nothing is overwritten)."""
    if not uri.lower().endswith(TABLE_SUFFIXES):
        raise PredictError(f"output {uri!r} must end in .parquet or .csv")
    if exists_uri(uri):
        raise PredictError(
            f"output {uri} already exists: choose another --out (nothing overwritten)"
        )


def write_frame(frame: pd.DataFrame, uri: str) -> None:
    """Write Parquet or CSV (by suffix) to a path or s3:// URI; refuses to overwrite."""
    check_output(uri)
    write_table(frame, uri)


def predict_store(
    uri: str,
    predictor: Predictor,
    out_uri: str | None = None,
    *,
    progress: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """Predict every image under a folder or s3:// prefix and write the table to `out_uri`
    (default: `output_uri(uri)`, next to the inputs). Inputs are only read."""
    target = out_uri or output_uri(uri)
    check_output(target)
    keys = image_keys(uri)
    if not keys:
        raise PredictError(f"no .jpg/.jpeg/.png images under {uri}")
    store = open_store(uri)
    step = predictor.batch_size * 4
    frames = []
    for i in range(0, len(keys), step):
        frames.append(predictor.score(keys[i : i + step], store.get))
        if progress:
            progress(len(frames[-1]))
    frame = pd.concat(frames, ignore_index=True)
    write_frame(frame, target)
    return frame
