"""Reports: metrics tables with intervals, the summary, the charts and the files they write."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skin.evaluate import report
from skin.stats.bootstrap import confidence_intervals, flat_intervals
from skin.stats.calibration import apply_temperature, fit_temperature
from skin.stats.metrics import flat_metrics, split_metrics
from skin.stats.operating import operating_points
from skin.stats.slices import slice_table

CLASSES = ("MEL", "NV", "BCC")


def predictions(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, logits and probabilities of a model that is right more often than not."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(CLASSES), n)
    logits = rng.normal(size=(n, len(CLASSES))) * 2
    logits[np.arange(n), y] += 2.5
    return y, logits, apply_temperature(logits, 1.0)


def metrics_with_intervals(n_resamples: int = 200) -> dict[str, float]:
    metrics: dict[str, float] = {"bias": 0.1, "variance": 0.05, "variance_test": 0.06}
    for seed, split in enumerate(("train", "dev", "test")):
        y, _, p = predictions(300, seed)
        metrics |= flat_metrics(split, split_metrics(y, p, CLASSES))
        iv = confidence_intervals(y, p, None, n_resamples, seed=0, auc=split != "train")
        metrics |= flat_intervals(split, iv, CLASSES)
    return metrics | {"human_level": 0.9, "best_epoch": 2.0}


def facts(n_resamples: int = 200) -> report.RunFacts:
    counts = pd.DataFrame({"train": [1], "dev": [1], "test": [1]}, index=["MEL"])
    return report.RunFacts("demo", "abc123", counts, "a recipe", n_resamples)


def test_metrics_table_carries_each_interval_around_its_value() -> None:
    metrics = metrics_with_intervals()
    table = report.metrics_table(metrics, intervals=True)
    for split in ("dev", "test"):
        row = table.loc[split]
        for col in ("accuracy", "balanced_accuracy", "macro_auc"):
            assert row[f"{col}_ci_low"] <= row[col] <= row[f"{col}_ci_high"], (split, col, row)
    assert np.isnan(table.loc["train", "macro_auc_ci_low"]), "no AUC interval on train"
    assert list(report.metrics_table(metrics).columns) == report.METRIC_COLUMNS, "plain by default"


def test_text_table_shows_brackets_only_where_an_interval_exists() -> None:
    metrics = metrics_with_intervals()
    text = report.metrics_table_text(metrics)
    low, high = metrics["test_balanced_accuracy_ci_low"], metrics["test_balanced_accuracy_ci_high"]
    cell = text.loc["test", "balanced_accuracy"]
    assert cell == f"{metrics['test_balanced_accuracy']:.4f} [{low:.3f}, {high:.3f}]", cell
    assert "[" not in text.loc["train", "macro_auc"], text.loc["train", "macro_auc"]
    assert "[" not in text.loc["test", "macro_f1"], "macro F1 has no interval"


def test_summary_states_the_intervals_and_how_they_were_made() -> None:
    metrics = metrics_with_intervals()
    text = report.report_summary_markdown(metrics, "reduce bias first", facts())
    low = metrics["dev_balanced_accuracy_ci_low"]
    assert f"[{low:.3f}, " in text, text
    assert "200 resamples of lesions" in text, text
    off = report.report_summary_markdown(metrics, "reading", facts(0))
    assert "no intervals" in off, off


def test_summary_head_leads_with_the_metrics(tmp_path: Path) -> None:
    path = tmp_path / "summary.md"
    path.write_text(report.report_summary_markdown(metrics_with_intervals(), "r", facts()))
    head = report.summary_head(path)
    assert len(head.splitlines()) <= report.SUMMARY_HEAD
    assert "balanced_accuracy" in head and "bias" in head, head


def test_predictions_frame_keeps_the_gate_columns() -> None:
    rows = pd.DataFrame(
        {
            "key": ["a.jpg", "b.jpg"],
            "source": "s3://b/p",
            "label": ["MEL", "NV"],
            "split": "dev",
            "sex": ["male", None],
        }
    )
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]])
    frame = report.predictions_frame(rows, probs, CLASSES)
    want = ["key", "source", "label", "lesion_id", "sex", "prob_MEL", "prob_NV", "prob_BCC"]
    assert list(frame.columns) == want, frame.columns
    assert frame["prob_NV"].tolist() == [0.2, 0.8]
    with pytest.raises(ValueError, match="2 manifest rows for 1 predictions"):
        report.predictions_frame(rows, probs[:1], CLASSES)


def test_write_reports_draws_every_chart_and_writes_the_findings(tmp_path: Path) -> None:
    y, logits, p = predictions(400, 7)
    dev_y, dev_logits, dev_p = predictions(400, 8)
    results = {"dev": split_metrics(dev_y, dev_p, CLASSES), "test": split_metrics(y, p, CLASSES)}
    images = np.zeros((len(y), 8, 8, 3), np.uint8)
    scored = report.Scored(
        CLASSES, results, {"dev": (dev_p, dev_y), "test": (p, y)}, images, np.arange(len(y))
    )
    metrics = metrics_with_intervals()
    t = fit_temperature(dev_logits, dev_y)
    metrics |= {"temperature": t, "test_ece_calibrated": 0.01, "test_log_loss_calibrated": 0.5}
    points = operating_points((dev_y, dev_p), (y, p), CLASSES, n_resamples=100)
    meta = pd.DataFrame({"sex": np.resize(["male", "female", None], len(y))})
    slices = slice_table(meta, y, p, CLASSES, min_size=100, n_resamples=100)
    rows = pd.DataFrame({"key": [f"{i}.jpg" for i in range(len(y))], "source": "x", "label": "MEL"})
    findings = report.Findings(
        predictions={"test": report.predictions_frame(rows, p, CLASSES)},
        calibration={"temperature": t, "fitted_on": "dev"},
        calibrated_test=apply_temperature(logits, t),
        operating=points,
        positives={"mel": ["MEL"], "malignant": ["MEL", "BCC"]},
        slices=slices,
    )
    history = [
        {"epoch": e, "train_loss": 1 / e, "dev_loss": 1 / e, "train_accuracy": 0.5,
         "dev_accuracy": 0.5, "dev_balanced_accuracy": 0.5}
        for e in (1, 2, 3)
    ]  # fmt: skip
    report.write_reports(tmp_path, scored, metrics, "r", history, facts(), findings)
    for name in ("per_class_test.png", "roc_test.png", "reliability_test.png",
                 "learning_curves.png", "slices_test.png", "slices_test.csv",
                 "predictions_test.parquet", "summary.md"):  # fmt: skip
        assert (tmp_path / name).stat().st_size > 0, name
    import json

    assert json.loads((tmp_path / "calibration.json").read_text())["temperature"] == t
    ops = json.loads((tmp_path / "operating_points.json").read_text())
    assert ops["chosen_on"] == "dev"
    assert {(q["name"], q["target"]) for q in ops["points"]} == {
        (n, s) for n in ("mel", "malignant") for s in (0.9, 0.95)
    }, ops
    summary = (tmp_path / "summary.md").read_text()
    assert "Operating points" in summary and "Calibration" in summary, summary
    assert "slices scored" in summary, summary
