"""The cross-validation flow's artifact and log line: where the fold ensemble is."""

from __future__ import annotations

from flows.cv import ensemble_line, summary_markdown

METRICS = {"cv_balanced_accuracy_mean": 0.61, "cv_balanced_accuracy_std": 0.03,
           "cv_oof_balanced_accuracy": 0.6}  # fmt: skip
FOLDS = [{"fold": 0, "run_id": "f0", "dev_balanced_accuracy": 0.6}]


def test_the_cv_artifact_names_the_ensemble_run_nested_under_the_parent() -> None:
    ensemble = {"run_id": "e1", "url": "http://mlflow/#/runs/e1",
                "metrics": {"test_balanced_accuracy": 0.64},
                "registration": {"version": "3", "alias": "champion"}}  # fmt: skip
    result = {"folds": FOLDS, "parent_run_id": "p1", "metrics": METRICS, "ensemble": ensemble}
    text = summary_markdown(result)
    assert "Fold ensemble: MLflow run [`e1`](http://mlflow/#/runs/e1)" in text, text
    assert "nested under the CV parent" in text and "v3 as champion" in text, text
    assert "0.6400" in ensemble_line(ensemble)


def test_without_an_ensemble_the_artifact_names_none() -> None:
    text = summary_markdown({"folds": FOLDS, "parent_run_id": "p1", "metrics": METRICS})
    assert "Fold ensemble" not in text, text
    assert ensemble_line({"run_id": "e2"}).startswith("Fold ensemble: MLflow run `e2`")
