"""The cross-validation flow's artifact and log line: where the fold ensemble is."""

from __future__ import annotations

from flows.cv import ensemble_line, summary_markdown
from flows.outcomes import CVResult, EnsembleResult
from skin.release.registry import Registration

METRICS = {"cv_balanced_accuracy_mean": 0.61, "cv_balanced_accuracy_std": 0.03,
           "cv_oof_balanced_accuracy": 0.6}  # fmt: skip
FOLDS = [{"fold": 0, "run_id": "f0", "dev_balanced_accuracy": 0.6}]


def cv(ensemble: EnsembleResult | None = None) -> CVResult:
    return CVResult("p1", FOLDS, METRICS, "oof", "table", "m", "h", ensemble=ensemble)


def test_the_cv_artifact_names_the_ensemble_run_nested_under_the_parent() -> None:
    ensemble = EnsembleResult("e1", {"test_balanced_accuracy": 0.64}, "", "report",
                              url="http://mlflow/#/runs/e1",
                              registration=Registration("m", "3", "champion", 0.64, None, None))  # fmt: skip
    result = cv(ensemble)
    text = summary_markdown(result)
    assert "Fold ensemble: MLflow run [`e1`](http://mlflow/#/runs/e1)" in text, text
    assert "nested under the CV parent" in text and "v3 as champion" in text, text
    assert "0.6400" in ensemble_line(ensemble)


def test_without_an_ensemble_the_artifact_names_none() -> None:
    text = summary_markdown(cv())
    assert "Fold ensemble" not in text, text
    assert ensemble_line(EnsembleResult("e2", {}, "", "r")).startswith(
        "Fold ensemble: MLflow run `e2`"
    )
