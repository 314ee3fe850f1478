"""An ensemble as a predictor: its members' calibrated probabilities averaged, then its own
temperature; the same interface as one model's `skin.serve.predict.Predictor`.

What `skin.serve.loading` loads for a members.json. Building, scoring and logging an ensemble (the
pipeline stage) live in `skin.search.ensemble`, above this.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from skin.data.images import ImageDecodeError
from skin.data.storage import StorageError
from skin.serve.predict import (
    ModelSource,
    PredictError,
    Predictor,
    checkpoint_predictor,
    predictions_frame,
    resolved_model,
    stored_abstention,
    top_k,
    with_abstention,
)
from skin.stats.abstain import Abstention, msp_of_probs
from skin.stats.calibration import apply_temperature
from skin.track.refs import CheckpointRef
from skin.track.tracking import sha256_file

PROB_FLOOR = 1e-12  # an averaged probability of 0 has no log: the ensemble's logits floor it


class EnsembleError(ValueError):
    """Members cannot be averaged (other classes, a changed file); says which member and why."""


def ensemble_logits(mean: np.ndarray) -> np.ndarray:
    """The log of the averaged probabilities: what the ensemble's temperature divides."""
    return np.log(np.clip(np.asarray(mean, dtype=np.float64), PROB_FLOOR, None))


def calibrate_mean(mean: np.ndarray, temperature: float) -> np.ndarray:
    """The ensemble's answer from its members' mean: softmax(log(mean) / T); T = 1 is the mean."""
    if temperature == 1.0:
        return mean
    return apply_temperature(ensemble_logits(mean), temperature)


def load_ensemble(
    members_file: Path,
    device: torch.device,
    source: ModelSource,
    *,
    tta: bool = False,
    batch_size: int = 64,
) -> EnsemblePredictor:
    """The predictor an ensemble folder describes; each member's file checked against its sha256."""
    try:
        doc = json.loads(members_file.read_text())
        listed = doc["members"]
    except (ValueError, KeyError, TypeError) as err:
        raise EnsembleError(f"{members_file}: not an ensemble's members list: {err}") from err
    predictors = []
    for i, entry in enumerate(listed):
        path = members_file.parent / entry["checkpoint"]
        if sha256_file(path) != entry["sha256"]:
            raise EnsembleError(f"{members_file}: member {i} ({path.name}) changed since logged")
        with resolved_model(CheckpointRef(str(path))) as (checkpoint, member):
            predictors.append(
                checkpoint_predictor(checkpoint, device, member, tta=tta, batch_size=batch_size)
            )
    temperature = ensemble_temperature(doc, members_file)
    return EnsemblePredictor(predictors, source, stored_abstention(members_file), temperature)


def ensemble_temperature(doc: Mapping[str, Any], where: Path) -> float:
    """The ensemble's own temperature in a members.json; 1 (the plain mean) in one written before
    ensembles were calibrated."""
    value = doc.get("temperature", 1.0)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < np.inf:
        raise EnsembleError(
            f"{where}: the ensemble's temperature must be a positive number, not {value!r}"
            " (rewrite members.json, or run `skin ensemble` again)"
        )
    return float(value)


class EnsemblePredictor(Predictor):
    """Members averaged: `Predictor`'s interface (predict, predict_arrays, score, top_k, classes),
    each member with its own preprocessing and temperature."""

    def __init__(
        self,
        members: Sequence[Predictor],
        source: ModelSource,
        abstention: Abstention | None = None,
        temperature: float = 1.0,
    ) -> None:
        # No Predictor.__init__: an ensemble has no single network; its temperature divides the
        # log of the averaged probabilities. Its abstention rule scores those, so only msp.
        if not members:
            raise EnsembleError("an ensemble needs at least one member")
        classes = members[0].classes
        for i, m in enumerate(members):
            if tuple(m.classes) != tuple(classes):
                raise EnsembleError(f"member {i} predicts {m.classes}, member 0 {classes}")
        self.members = list(members)
        self.classes = tuple(classes)
        self.source = source
        self.spec = members[0].spec
        self.device = members[0].device
        self.batch_size = members[0].batch_size
        self.tta = members[0].tta
        self.abstention = ensemble_rule(abstention, str(source.resolved))
        self.temperature = float(temperature)  # the ensemble's own, on the mean (1: plain mean)

    @property
    def model(self) -> torch.nn.Module:  # type: ignore[override]
        """No single network: what needs one (ONNX export) must take a member."""
        raise PredictError(
            f"{self.source.resolved} is an ensemble of {len(self.members)} models: it has no"
            " single network (export or inspect one of its members instead)"
        )

    def using(self, *, tta: bool) -> EnsemblePredictor:
        other = copy.copy(self)
        other.members = [m.using(tta=tta) for m in self.members]
        other.tta = tta
        return other

    def to_input(self, data: bytes) -> np.ndarray:
        """Members may crop to different sizes: only one shared size has one input array."""
        self._one_size()
        return self.members[0].to_input(data)

    def predict(self, images: Sequence[bytes]) -> np.ndarray:
        """The members' calibrated probabilities [N, classes] (each decoding the bytes), averaged
        and calibrated by the ensemble's temperature."""
        return calibrate_mean(
            np.mean([m.predict(images) for m in self.members], axis=0), self.temperature
        )

    def predict_arrays(self, images: np.ndarray) -> np.ndarray:
        """For decoded, cropped images: every member must take the same input size."""
        self._one_size()
        mean = np.mean([m.predict_arrays(images) for m in self.members], axis=0)
        return calibrate_mean(mean, self.temperature)

    def _one_size(self) -> None:
        sizes = {m.spec.size for m in self.members}
        if len(sizes) > 1:
            raise PredictError(f"ensemble members take inputs of sizes {sorted(sizes)}: use bytes")

    def top_k(self, probs: np.ndarray, k: int = 3) -> list[list[tuple[str, float]]]:
        return top_k(probs, self.classes, k)

    def score(self, keys: Sequence[str], fetch: Callable[[str], bytes]) -> pd.DataFrame:
        """Fetch each key once; every member decodes and scores it; probabilities averaged. A key
        that fails gets a row with its error."""
        with ThreadPoolExecutor(max_workers=8) as pool:
            fetched = dict(zip(keys, pool.map(lambda k: _fetch(fetch, k), keys), strict=True))

        def cached(key: str) -> bytes:
            data = fetched[key]
            if isinstance(data, Exception):
                raise data
            return data

        frames = [m.score(keys, cached) for m in self.members]
        columns = [f"prob_{c}" for c in self.classes]
        mean = np.mean([f[columns].to_numpy(dtype=np.float64) for f in frames], axis=0)
        probs = calibrate_mean(mean, self.temperature)
        errors = [
            next((e for e in row if isinstance(e, str)), None)
            for row in zip(*(f["error"] for f in frames), strict=True)
        ]
        probs[[e is not None for e in errors]] = np.nan
        frame = predictions_frame(keys, probs, errors, self.classes, self.source.resolved)
        if self.abstention is None:
            return frame
        return with_abstention(frame, msp_of_probs(probs), self.abstention)

    def ood_scores(self, logits: np.ndarray) -> np.ndarray:
        """No logits to score: an ensemble's score is `msp_of_probs` of its averaged output."""
        raise PredictError(
            f"{self.source.resolved} is an ensemble: its OOD score is 1 - max of the averaged"
            " probabilities (skin.stats.abstain.msp_of_probs), not a function of logits"
        )


def ensemble_rule(rule: Abstention | None, where: str) -> Abstention | None:
    """An ensemble's abstention rule, refused unless msp (energy needs logits it does not have)."""
    if rule is not None and rule.kind != "msp":
        raise EnsembleError(
            f"{where}: an ensemble abstains on msp (1 - max averaged probability) only, not"
            f" {rule.kind!r}: energy needs logits, which averaged members do not have"
        )
    return rule


def _fetch(fetch: Callable[[str], bytes], key: str) -> bytes | Exception:
    try:
        return fetch(key)
    except (ImageDecodeError, StorageError, OSError) as err:
        return err
