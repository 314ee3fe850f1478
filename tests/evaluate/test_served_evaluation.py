"""What evaluation writes is what is served and what is logged (#21 faults 8 and 11): one TTA,
one temperature, and predictions files from which every logged number is recomputed."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, recall_score, roc_auc_score

from skin.base.config import PipelineConfig
from skin.data import manifest as mf
from skin.data.storage import open_store
from skin.evaluate.compare import score_champion
from skin.evaluate.stage import abstention_measures, evaluate_stage
from skin.serve.loading import load_predictor
from skin.serve.tta import probabilities
from skin.stats.abstain import SCORE_KINDS, auroc, ood_scores
from skin.stats.bootstrap import confidence_intervals, flat_intervals
from skin.stats.calibration import calibrate, nll
from skin.stats.metrics import (
    bias_variance,
    expected_calibration_error,
    flat_metrics,
    split_metrics,
)
from skin.stats.operating import flat_operating, operating_points
from skin.stats.slices import slice_metrics, slice_table
from skin.track.tracking import MLflowTracker, NullTracker, tracked_run
from skin.train.stage import train_stage
from tests.helpers import make_manifest, tracking_db, with_metadata

pytestmark = pytest.mark.slow

EPOCHS = 4
ATOL = 1e-5  # served against the file: one forward pass, other batch sizes
EXACT = 1e-9  # recomputed from the file: the same numbers, stored in float64
HELD = "DF"
# Logged but not a function of the predictions files: the epoch chosen, the configured human
# level, and TTA's gain (a second, single-view pass over test).
NOT_FROM_FILE = {"best_epoch", "human_level", "test_balanced_accuracy_no_tta", "tta_gain"}


@dataclass(frozen=True)
class Run:
    """One tiny trained and evaluated run (TTA on), and what it logged."""

    cfg: PipelineConfig
    manifest: pd.DataFrame
    report: Path
    logged: dict[str, float]
    tracking_uri: str | None = None
    run_id: str | None = None
    model_uri: str | None = None


def tiny_run(tmp: Path, data: Path, *, mlflow: bool, **overrides: object) -> Run:
    """Train and evaluate the tiny recipe with TTA on; logged to a SQLite MLflow store if asked."""
    from mlflow import MlflowClient

    settings = {"train.epochs": EPOCHS, "evaluate.tta": True, "evaluate.bootstrap": 50,
                "evaluate.min_slice_size": 10, **overrides}  # fmt: skip
    uri, cfg = make_manifest(tmp, data, **settings)
    manifest = with_metadata(uri)
    if not mlflow:
        null = NullTracker("tiny")
        out = evaluate_stage(uri, train_stage(uri, cfg, null).best_checkpoint, cfg, null)
        return Run(cfg, manifest, Path(out.report_dir), dict(null.metrics))
    store = tracking_db(tmp)
    tracker = MLflowTracker(store, "served-evaluation")
    with tracked_run(tracker):
        out = evaluate_stage(uri, train_stage(uri, cfg, tracker).best_checkpoint, cfg, tracker)
    logged = dict(MlflowClient(store).get_run(tracker.run_id).data.metrics)
    return Run(cfg, manifest, Path(out.report_dir), logged, store, tracker.run_id, out.model_uri)


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory: pytest.TempPathFactory, sample_data: Path) -> Run:
    return tiny_run(tmp_path_factory.mktemp("served"), sample_data, mlflow=True)


@pytest.fixture(scope="module")
def held_out_run(tmp_path_factory: pytest.TempPathFactory, sample_data: Path) -> Run:
    tmp = tmp_path_factory.mktemp("held-out")
    return tiny_run(tmp, sample_data, mlflow=False, **{"data.holdout_class": HELD})


def image_bytes(frame: pd.DataFrame) -> list[bytes]:
    """Each row's image file, read from its source."""
    return [open_store(str(s)).get(k) for s, k in zip(frame["source"], frame["key"], strict=True)]


def known_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of the model's own classes (not the held-out class's)."""
    held = frame["held_out"] if "held_out" in frame else pd.Series(False, index=frame.index)
    return frame[~held.astype(bool)].reset_index(drop=True)


def columns(frame: pd.DataFrame, prefix: str, classes: tuple[str, ...]) -> np.ndarray:
    return frame[[f"{prefix}{c}" for c in classes]].to_numpy(dtype=np.float64)


# --------------------------------------------------------------------------- fault 8: one TTA


def test_the_served_model_answers_as_the_evaluation_file_says_with_tta(logged_run: Run) -> None:
    import mlflow.pyfunc

    classes = logged_run.cfg.data.known_classes
    dev = pd.read_parquet(logged_run.report / "predictions_dev.parquet")
    dev = known_rows(dev)
    expected = columns(dev, "prob_", classes)
    mlflow.set_tracking_uri(logged_run.tracking_uri)
    model = mlflow.pyfunc.load_model(logged_run.model_uri)
    images = pd.DataFrame({"image": [base64.b64encode(b).decode() for b in image_bytes(dev)]})
    served = model.predict(images, params={"tta": True})
    diff = np.abs(columns(served, "p_", classes) - expected).max()
    assert diff < ATOL, f"the served pyfunc differs from predictions_dev.parquet by {diff}"
    ood = np.abs(served["ood_score"].to_numpy(float) - dev["ood_score"].to_numpy(float)).max()
    assert ood < ATOL, (
        f"the served UNK score differs from the one its threshold was chosen on by {ood}"
    )
    champion = score_champion(
        f"runs:/{logged_run.run_id}/model",
        dev,
        classes,
        tta=True,
        tracking_uri=logged_run.tracking_uri,
    )
    diff = np.abs(champion - expected).max()
    assert diff < ATOL, f"the gate scores this model as a champion {diff} away from its file"
    plain = model.predict(images)
    assert np.abs(columns(plain, "p_", classes) - expected).max() > 1e-4, "TTA changed nothing"


def test_evaluation_and_prediction_share_one_tta_definition(logged_run: Run) -> None:
    """Evaluation's and the Predictor's probabilities are softmax(mean view logits / T)."""

    classes = logged_run.cfg.data.known_classes
    dev = pd.read_parquet(logged_run.report / "predictions_dev.parquet").head(8)
    t = json.loads((logged_run.report / "calibration.json").read_text())["temperature"]
    logits = columns(dev, "logit_", classes)
    np.testing.assert_allclose(columns(dev, "prob_", classes), probabilities(logits, t), atol=1e-9)
    np.testing.assert_allclose(columns(dev, "raw_prob_", classes), probabilities(logits), atol=1e-9)
    predictor = load_predictor(f"runs:/{logged_run.run_id}/model", "cpu", tta=True,
                               tracking_uri=logged_run.tracking_uri)  # fmt: skip
    arrays = np.stack([predictor.to_input(b) for b in image_bytes(dev)])
    p, z = predictor.probs_and_logits(arrays)
    np.testing.assert_allclose(z, logits, atol=ATOL)
    np.testing.assert_allclose(p, probabilities(z, predictor.temperature), atol=1e-9)


# --------------------------------------------------------------------------- fault 11: the file


def recomputed(run: Run) -> dict[str, float]:
    """Every metric evaluation logs, recomputed from the report's predictions files (and the
    config: bootstrap size and seed, coverage, score kind, malignant classes, slice size)."""

    e, seed, classes = run.cfg.evaluate, run.cfg.split.seed, run.cfg.data.known_classes
    frames = {s: pd.read_parquet(run.report / f"predictions_{s}.parquet") for s in mf.SPLITS}
    known = {s: f[~f["held_out"]].reset_index(drop=True) for s, f in frames.items()}
    unknown = {s: f[f["held_out"]] for s, f in frames.items() if f["held_out"].any()}
    y = {s: f["label"].map(classes.index).to_numpy(np.int64) for s, f in known.items()}
    out: dict[str, float] = {}
    for s, f in known.items():
        raw = columns(f, "raw_prob_", classes)
        out |= flat_metrics(s, split_metrics(y[s], raw, classes))
        iv = confidence_intervals(y[s], raw, f["lesion_id"], e.bootstrap, seed, auc=s != "train")
        out |= flat_intervals(s, iv, classes)
    acc = {s: out[f"{s}_accuracy"] for s in mf.SPLITS}
    out |= bias_variance(acc["train"], acc["dev"], acc["test"], e.human_level)
    fit = calibrate(columns(known["dev"], "logit_", classes), y["dev"])
    t = out["temperature"] = fit.temperature
    out["temperature_accepted"] = float(fit.accepted)
    out["temperature_fitted"] = fit.fitted
    test_logits, test_probs = (columns(known["test"], p, classes) for p in ("logit_", "prob_"))
    out["test_ece_calibrated"] = expected_calibration_error(y["test"], test_probs)
    out["test_log_loss_calibrated"] = nll(test_logits, y["test"], t)
    probs = {s: columns(f, "prob_", classes) for s, f in known.items()}
    scores = {s: known[s]["ood_score"].to_numpy(float) for s in ("dev", "test")}
    unk = {s: f["ood_score"].to_numpy(float) for s, f in unknown.items()}
    cases = {s: (y[s], probs[s], scores[s]) for s in ("dev", "test")}
    out |= abstention_measures(
        cases, unk, run.cfg.predict.ood_score, run.cfg.predict.abstain_coverage
    )[1]
    for s, f in unknown.items():
        known_z, unknown_z = columns(known[s], "logit_", classes), columns(f, "logit_", classes)
        for k in SCORE_KINDS:
            out[f"{s}_unk_auroc_{k}"] = auroc(
                ood_scores(known_z, t, k), ood_scores(unknown_z, t, k)
            )
    points = operating_points(
        (y["dev"], probs["dev"]), (y["test"], test_probs), classes, known["test"]["lesion_id"],
        malignant=e.malignant, n_resamples=e.bootstrap, seed=seed,
    )  # fmt: skip
    out |= flat_operating(points, "test")
    mel90 = next((p.threshold for p in points if p.name == "mel" and p.target == 0.90), None)
    meta = known["test"][["age_approx", "anatom_site_general", "sex"]]
    table = slice_table(meta, y["test"], test_probs, classes, known["test"]["lesion_id"],
                        min_size=e.min_slice_size, n_resamples=e.bootstrap, seed=seed,
                        mel_threshold=mel90)  # fmt: skip
    return out | slice_metrics(table, "test")


def assert_every_logged_metric_is_recomputed(run: Run) -> None:
    again = recomputed(run)
    logged = {k: v for k, v in run.logged.items() if not k.startswith("epoch/")}
    assert len(logged) > 100 and "test_mel_sensitivity_at_spec90" in logged, sorted(logged)
    missing = sorted(set(logged) - set(again) - NOT_FROM_FILE)
    assert not missing, f"logged but not recomputed from the predictions files: {missing}"
    wrong = {
        k: (v, again[k]) for k, v in logged.items() if k in again and abs(v - again[k]) > EXACT
    }
    assert not wrong, f"logged vs recomputed from the file: {wrong}"


def test_every_logged_metric_is_recomputed_from_the_predictions_files(logged_run: Run) -> None:
    assert_every_logged_metric_is_recomputed(logged_run)


def test_isic_style_scoring_of_the_file_gives_the_logged_numbers(logged_run: Run) -> None:
    """An outside scorer (scikit-learn, as ISIC's) on `raw_prob_*` agrees with the logged AUCs."""
    classes = logged_run.cfg.data.known_classes
    test = pd.read_parquet(logged_run.report / "predictions_test.parquet")
    raw, m = columns(test, "raw_prob_", classes), logged_run.logged
    y = test["label"].map(classes.index).to_numpy()
    for j, c in enumerate(classes):
        assert roc_auc_score(y == j, raw[:, j]) == pytest.approx(m[f"test_auc_{c}"], abs=EXACT), c
        assert recall_score(y == j, raw.argmax(1) == j) == pytest.approx(m[f"test_recall_{c}"]), c
    assert accuracy_score(y, raw.argmax(1)) == pytest.approx(m["test_accuracy"], abs=EXACT)
    assert balanced_accuracy_score(y, raw.argmax(1)) == pytest.approx(
        m["test_balanced_accuracy"], abs=EXACT
    )


def test_the_held_out_images_are_in_the_file_with_their_scores(held_out_run: Run) -> None:
    manifest = held_out_run.manifest
    for split in ("dev", "test"):
        frame = pd.read_parquet(held_out_run.report / f"predictions_{split}.parquet")
        held = frame[frame["held_out"]]
        want = manifest[(manifest["split"] == split) & (manifest["label"] == HELD)]
        assert set(held["key"]) == set(want["key"]) and len(held), f"{split}: {len(held)} rows"
        assert (held["label"] == HELD).all() and not frame.loc[~frame["held_out"], "label"].eq(
            HELD
        ).any()
        assert held["ood_score"].notna().all() and held["abstained"].notna().all(), split
    assert_every_logged_metric_is_recomputed(held_out_run)
