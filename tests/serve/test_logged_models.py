"""Models already in users' registries keep loading: a tiny image-in model logged by an earlier
version (tests/fixtures/logged_model, pickled against that version's module paths) still loads
with MLflow and answers as it did when it was logged."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
import pytest

from skin.base.labels import CLASSES
from tests.fixtures.images import fixture_images

FIXTURES = Path(__file__).parents[1] / "fixtures"


def test_a_model_logged_by_an_earlier_version_loads_and_answers_the_same() -> None:
    model = mlflow.pyfunc.load_model(str(FIXTURES / "logged_model"))
    answers = model.predict(fixture_images())
    then = pd.DataFrame(json.loads((FIXTURES / "logged_model_answers.json").read_text()))
    columns = [f"p_{c}" for c in CLASSES]
    pd.testing.assert_frame_equal(answers[columns], then[columns], atol=1e-5, check_dtype=False)
    assert list(answers["label"]) == list(then["label"])


def test_the_fixture_is_what_the_pipeline_logs() -> None:
    """The fixture holds a real logged model (checkpoint and pickled pyfunc), not a stand-in."""
    text = (FIXTURES / "logged_model" / "MLmodel").read_text()
    assert "python_function" in text and "artifacts/checkpoint.pt" in text, text[:500]
    assert (FIXTURES / "logged_model" / "python_model.pkl").stat().st_size > 0
    pytest.importorskip("skin.serve.pyfunc")  # the module the pickle names must exist
