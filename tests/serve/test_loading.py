"""One loader for every model reference: a checkpoint gives a Predictor, a members.json an
EnsemblePredictor; the single-model loader refuses an ensemble by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from skin.search.ensemble import Member, write_members
from skin.serve.averaging import EnsemblePredictor
from skin.serve.loading import load_predictor
from skin.serve.predict import PredictError, Predictor, checkpoint_predictor, resolved_model
from tests.serve.test_predict import tiny_checkpoints

pytestmark = pytest.mark.slow  # trains two tiny epochs


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    return tiny_checkpoints(tmp_path_factory.mktemp("loading"))


def test_a_checkpoint_and_an_ensemble_folder_load_through_one_call(
    checkpoints: dict[int, Path], tmp_path: Path
) -> None:
    single = load_predictor(str(checkpoints[2]), "cpu")
    assert type(single) is Predictor and single.source.epoch == 2
    write_members([Member(checkpoints[1], 1.0, "a"), Member(checkpoints[2], 1.0, "b")], tmp_path)
    ensemble = load_predictor(str(tmp_path / "members.json"), "cpu")
    assert isinstance(ensemble, EnsemblePredictor) and len(ensemble.members) == 2
    assert list(ensemble.classes) == list(single.classes)


def test_the_single_model_loader_refuses_an_ensemble_by_name(
    checkpoints: dict[int, Path], tmp_path: Path
) -> None:
    write_members([Member(checkpoints[1], 1.0, "a")], tmp_path)
    with (
        resolved_model(str(tmp_path / "members.json")) as (path, source),
        pytest.raises(PredictError, match="is an ensemble"),
    ):
        checkpoint_predictor(path, torch.device("cpu"), source)
