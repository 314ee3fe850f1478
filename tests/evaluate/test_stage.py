"""The evaluate stage on a tiny trained model: intervals, predictions, calibration, operating
points, slices and the whole learning curve, as metrics and as report files."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skin.evaluate.stage import EvalOutcome, evaluate_stage
from skin.track.tracking import NullTracker
from skin.train.stage import train_stage
from tests.helpers import SEXES, make_manifest, with_metadata

pytestmark = pytest.mark.slow

EPOCHS = 3


@dataclass
class Evaluated:
    outcome: EvalOutcome
    tracker: NullTracker
    manifest: pd.DataFrame
    report: Path
    classes: tuple[str, ...]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory, sample_data: Path) -> Evaluated:
    tmp = tmp_path_factory.mktemp("stages")
    overrides = {"train.epochs": EPOCHS, "evaluate.bootstrap": 200, "evaluate.min_slice_size": 10,
                 "tracking.export_onnx": True}  # fmt: skip
    uri, cfg = make_manifest(tmp, sample_data, **overrides)
    manifest = with_metadata(uri)
    tracker = NullTracker("stages")
    out = train_stage(uri, cfg, tracker)
    outcome = evaluate_stage(uri, out.best_checkpoint, cfg, tracker)
    return Evaluated(outcome, tracker, manifest, Path(outcome.report_dir), cfg.data.classes)


def test_every_headline_number_sits_inside_its_interval(evaluated: Evaluated) -> None:
    m = evaluated.outcome.metrics
    names = [
        f"{s}_{metric}" for s in ("dev", "test") for metric in ("accuracy", "balanced_accuracy")
    ]
    names += ["dev_macro_auc", "test_macro_auc", "train_balanced_accuracy", "test_recall_MEL"]
    for name in names:
        low, high = m[f"{name}_ci_low"], m[f"{name}_ci_high"]
        assert low <= m[name] <= high, f"{name}: {m[name]} outside [{low}, {high}]"
        if "recall" not in name:  # a class recall of 0 on every resample is possible
            assert high - low > 0, f"{name}: an interval of width 0 on 64 images"
    assert "train_macro_auc_ci_low" not in m, "no AUC interval on train"
    logged = evaluated.tracker.metrics
    assert logged["test_balanced_accuracy_ci_low"] == m["test_balanced_accuracy_ci_low"]


def test_predictions_of_every_split_carry_the_gate_columns(evaluated: Evaluated) -> None:
    dev = pd.read_parquet(evaluated.report / "predictions_dev.parquet")
    probs = [f"prob_{c}" for c in evaluated.classes]
    want = ["key", "source", "label", "lesion_id", "age_approx", "anatom_site_general", "sex"]
    extra = [f"{p}{c}" for p in ("raw_prob_", "logit_") for c in evaluated.classes]
    assert list(dev.columns) == want + probs + ["ood_score", "abstained", *extra, "held_out"]
    rule = json.loads((evaluated.report / "abstention.json").read_text())
    assert (dev["abstained"] == (dev["ood_score"] > rule["threshold"])).all()
    coverage = evaluated.outcome.metrics["dev_abstain_coverage"]
    assert 1 - dev["abstained"].mean() == pytest.approx(coverage), "the rule the run measured"
    manifest = evaluated.manifest
    assert set(dev["key"]) == set(manifest.loc[manifest["split"] == "dev", "key"])
    assert np.allclose(dev[probs].sum(axis=1), 1, atol=1e-4), "probabilities sum to one"
    chosen = np.array(evaluated.classes)[dev[probs].to_numpy().argmax(1)]
    accuracy = float((chosen == dev["label"]).mean())
    assert accuracy == pytest.approx(evaluated.outcome.metrics["dev_accuracy"]), "rows line up"
    for split in ("train", "test"):
        assert (evaluated.report / f"predictions_{split}.parquet").is_file(), split


def test_temperature_is_fitted_on_dev_and_reported_before_and_after(evaluated: Evaluated) -> None:
    m = evaluated.outcome.metrics
    saved = json.loads((evaluated.report / "calibration.json").read_text())
    assert saved["temperature"] == pytest.approx(m["temperature"]) and m["temperature"] > 0
    assert saved["fitted_on"] == "dev"
    for name in ("test_ece", "test_log_loss", "test_ece_calibrated", "test_log_loss_calibrated"):
        assert np.isfinite(m[name]), name


def test_operating_thresholds_come_from_dev_and_are_read_on_test(evaluated: Evaluated) -> None:
    from skin.stats.operating import threshold_at_specificity

    m = evaluated.outcome.metrics
    dev = pd.read_parquet(evaluated.report / "predictions_dev.parquet")
    mel = (dev["label"] == "MEL").to_numpy()
    expected = threshold_at_specificity(dev["prob_MEL"].to_numpy(), mel, 0.90)
    assert m["mel_threshold_at_spec90"] == pytest.approx(expected), "threshold chosen on dev"
    for name in ("test_mel_sensitivity_at_spec90", "test_malignant_sensitivity_at_spec95"):
        assert m[f"{name}_ci_low"] <= m[name] <= m[f"{name}_ci_high"], name
    saved = json.loads((evaluated.report / "operating_points.json").read_text())
    by_key = {(p["name"], p["target"]): p for p in saved["points"]}
    assert by_key[("mel", 0.9)]["threshold"] == pytest.approx(expected)
    assert saved["mel_threshold_at_spec90"] == pytest.approx(expected), "what prediction reads"
    from skin.serve.pyfunc import mel_threshold

    assert mel_threshold(saved) == pytest.approx(expected), "the served model finds it"
    assert by_key[("malignant", 0.95)]["positive_classes"] == ["MEL", "BCC", "SCC"]


def test_slices_by_patient_metadata_are_tabled_charted_and_logged(evaluated: Evaluated) -> None:
    table = pd.read_csv(evaluated.report / "slices_test.csv")
    assert set(table["dimension"]) == {"sex", "age", "site"}, table
    assert table.loc[table["scored"], "n"].min() >= 10, "only slices of min size are scored"
    m = evaluated.outcome.metrics
    for sex in SEXES:
        name = f"test_slice/sex/{sex}/balanced_accuracy"
        assert m[f"{name}_ci_low"] <= m[name] <= m[f"{name}_ci_high"], name
    assert (evaluated.report / "slices_test.png").stat().st_size > 0


def test_the_learning_curve_spans_the_whole_training(evaluated: Evaluated) -> None:
    history = pd.read_csv(evaluated.report / "history.csv")
    assert history["epoch"].tolist() == list(range(1, EPOCHS + 1)), history


def test_the_run_is_described_by_the_head_of_its_summary(evaluated: Evaluated) -> None:
    description = evaluated.tracker.tags["mlflow.note.content"]
    summary = (evaluated.report / "summary.md").read_text()
    assert summary.startswith(description) and "balanced_accuracy" in description, description
    contexts = sorted(c for _, _, c, _ in evaluated.tracker.datasets)
    assert contexts == ["dev", "test", "train"], evaluated.tracker.datasets


def test_the_evaluated_weights_are_exported_as_onnx_when_asked(evaluated: Evaluated) -> None:
    import onnxruntime as ort

    path = evaluated.report.parent / "model.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    shape = session.get_inputs()[0].shape
    x = np.zeros((3, 3, shape[2], shape[3]), dtype=np.float32)
    (logits,) = session.run(None, {session.get_inputs()[0].name: x})
    assert logits.shape == (3, 8), "a dynamic batch of 3, one logit per class"
    assert "skin.classes" in session.get_modelmeta().custom_metadata_map, "preprocessing travels"


def test_the_error_gallery_of_test_is_in_the_report(evaluated: Evaluated) -> None:
    from PIL import Image

    with Image.open(evaluated.report / "gallery_test.png") as sheet:
        assert sheet.format == "PNG" and sheet.width > 300
