"""The image-in model's code (skin/serve/skin_model.py, MLflow's models-from-code): a model
logged from code (tests/fixtures/code_model, written by `python -m tests.fixtures.make_code_model`)
loads and answers as it did when logged, through the one stable name `skin.serve.SkinModel`,
wherever the class lives; a pickled model needs its old module path."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
import pytest

import skin.serve
from skin.base.labels import CLASSES
from skin.serve import pyfunc
from tests.fixtures.images import fixture_images

FIXTURES = Path(__file__).parents[1] / "fixtures"
COLUMNS = [f"p_{c}" for c in CLASSES]


def answers_then(name: str) -> pd.DataFrame:
    return pd.DataFrame(json.loads((FIXTURES / f"{name}_answers.json").read_text()))


def test_a_model_logged_from_code_loads_and_answers_the_same() -> None:
    model = mlflow.pyfunc.load_model(str(FIXTURES / "code_model"))
    answers, then = model.predict(fixture_images()), answers_then("code_model")
    pd.testing.assert_frame_equal(answers[COLUMNS], then[COLUMNS], atol=1e-5, check_dtype=False)
    assert list(answers["label"]) == list(then["label"])


def test_the_code_fixture_holds_code_and_no_pickle() -> None:
    folder = FIXTURES / "code_model"
    assert not list(folder.rglob("*.pkl")), "a model from code carries no pickle"
    text = (folder / "MLmodel").read_text()
    assert "model_code_path" in text and "artifacts/checkpoint.pt" in text, text[:500]
    assert (folder / "skin_model.py").is_file()


def test_the_code_names_only_the_stable_name() -> None:
    """skin_model.py imports nothing of ours but `skin.serve` (for `SkinModel`): that one name
    is what every model logged from code needs kept."""
    tree = ast.parse(pyfunc.MODEL_CODE.read_text())
    ours = {
        (node.module, tuple(a.name for a in node.names))
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("skin")
    }
    plain = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert ours == {("skin.serve", ("SkinModel",))}, ours
    assert not [name for name in plain if name.startswith("skin")], plain
    assert skin.serve.SkinModel is pyfunc.SkinModel


def test_after_a_move_the_code_model_loads_and_the_pickled_one_needs_its_old_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Simulate the next move: `skin.serve.pyfunc` and `skin.serving` no longer import, only
    `skin.serve.SkinModel` is kept. The model from code still answers; the pickled one cannot."""
    monkeypatch.setattr(skin.serve, "SkinModel", pyfunc.SkinModel, raising=False)
    monkeypatch.setitem(sys.modules, "skin.serve.pyfunc", None)
    monkeypatch.setitem(sys.modules, "skin.serving", None)
    model = mlflow.pyfunc.load_model(str(FIXTURES / "code_model"))
    answers = model.predict(fixture_images())
    pd.testing.assert_frame_equal(
        answers[COLUMNS], answers_then("code_model")[COLUMNS], atol=1e-5, check_dtype=False
    )
    with pytest.raises(ModuleNotFoundError, match=r"skin\.serving"):
        mlflow.pyfunc.load_model(str(FIXTURES / "logged_model"))
