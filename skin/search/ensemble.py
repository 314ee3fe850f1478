"""Ensembles: several trained models averaged as one (each with its own calibration and input).

An ensemble is a folder: `members.json` (each member's checkpoint and sha256, and the ensemble's
own temperature) beside `member_<i>/checkpoint.pt` and `member_<i>/calibration.json`.
`EnsemblePredictor` answers like a `Predictor`: every member decodes the image its own way,
applies its own temperature, the probabilities are averaged, and the mean is calibrated by the
ensemble's temperature (softmax(log(mean) / T), fitted on the ensemble's dev). Every threshold
the ensemble ships (UNK, operating points) is chosen on those served probabilities over dev
images none of its members trained on. The same folder travels inside the logged MLflow model.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skin.base.config import PipelineConfig, config_to_yaml
from skin.base.runs import RunPaths
from skin.data import manifest as mf
from skin.data.storage import open_store
from skin.evaluate.provenance import UNSEEN, seen_reasons, trained_rows
from skin.evaluate.report import abstention_line, metrics_table_text, operating_points_json
from skin.evaluate.report import predictions_frame as split_predictions
from skin.evaluate.stage import EvalOutcome, abstention_measures, with_ood_scores
from skin.serve.averaging import (
    EnsembleError,
    EnsemblePredictor,
    calibrate_mean,
    ensemble_logits,
    load_ensemble,
)
from skin.serve.predict import (
    ABSTENTION_FILE,
    CALIBRATION_FILE,
    MEMBERS_FILE,
    ModelSource,
    calibrated_temperature,
    local_checkpoint,
)
from skin.stats.abstain import abstention_json, msp_of_probs
from skin.stats.bootstrap import confidence_intervals, flat_intervals
from skin.stats.calibration import calibrate
from skin.stats.metrics import flat_metrics, split_metrics
from skin.stats.operating import operating_points, questions
from skin.track.refs import EnsembleRef, ModelRef, RunRef, as_model_ref
from skin.track.tracking import Tracker, resolve_tracking_uri, sha256_file
from skin.train.loop import pick_device

MEMBER_CHECKPOINT = "checkpoint.pt"
FOLDER = "ensemble"  # runs/<id>/ensemble: members.json, member_<i>/, abstention.json
SERVED_FORMULA = (  # the UNK score of what an ensemble serves (skin.stats.abstain's, after its temperature)
    "1 - max softmax(log(mean of the members' softmax(logits_i / T_i)) / T)"
)
COMBINE = (
    "mean of the members' calibrated probabilities, then the ensemble's own temperature:"
    " softmax(log(mean) / temperature), fitted on the ensemble's dev"
)


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Member:
    """One model going into an ensemble: its checkpoint, its temperature and where it came from."""

    checkpoint: Path
    temperature: float
    origin: str  # the reference it was loaded from (runs:/…, models:/…, a path)


# --------------------------------------------------------------------------- its own calibration


@dataclass(frozen=True)
class EnsembleCalibration:
    """The ensemble's own temperature, fitted on its averaged dev probabilities; `rejected` says
    why the fit was not used (T = 1 kept), None when it was."""

    temperature: float
    fitted: float
    dev_log_loss_before: float
    dev_log_loss_after: float
    dev_images: int
    rejected: str | None = None

    @classmethod
    def identity(cls) -> EnsembleCalibration:
        """No calibration yet: the plain mean of the members (T = 1)."""
        nan = float("nan")
        return cls(1.0, 1.0, nan, nan, 0, "not fitted")

    def to_json(self) -> dict[str, Any]:
        """What members.json records beside `temperature`: how and on what it was chosen."""
        doc = asdict(self) | {
            "formula": "softmax(log(mean of the members' calibrated probabilities) / temperature)",
            "chosen_on": "the ensemble's dev: images none of its members trained on",
        }
        return {
            k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in doc.items()
        }


def fit_ensemble_temperature(mean: np.ndarray, y: np.ndarray) -> EnsembleCalibration:
    """The ensemble's T fitted on its own dev probabilities (the members' mean, never one member's),
    judged by the single model's rule (`skin.stats.calibration.calibrate`): a fit at the optimiser's
    bound or one that does not lower dev log loss is refused and T = 1 kept."""
    fit = calibrate(ensemble_logits(mean), y)
    rejected = None if fit.accepted else fit.reason
    after = fit.dev_log_loss_fitted if fit.accepted else fit.dev_log_loss_raw
    return EnsembleCalibration(
        fit.temperature, fit.fitted, fit.dev_log_loss_raw, after, len(y), rejected
    )


def served_probabilities(
    means: Mapping[str, np.ndarray], dev_y: np.ndarray
) -> tuple[dict[str, np.ndarray], EnsembleCalibration]:
    """What the ensemble serves on each split (the members' mean per split, `means["dev"]` with
    labels `dev_y`): its temperature fitted on dev's mean, applied to every split. Thresholds are
    chosen on the dev this returns, so they see the probabilities prediction will give."""
    dev = means["dev"]
    ok = np.isfinite(dev).all(axis=1)
    calibration = fit_ensemble_temperature(dev[ok], np.asarray(dev_y)[ok])
    return {s: calibrate_mean(p, calibration.temperature) for s, p in means.items()}, calibration


def write_calibration(members_file: Path, calibration: EnsembleCalibration) -> None:
    """Record the ensemble's own temperature in its members.json (what prediction applies)."""
    doc = json.loads(members_file.read_text())
    doc |= {"temperature": calibration.temperature, "calibration": calibration.to_json()}
    members_file.write_text(json.dumps(doc, indent=2))


def write_members(
    members: Sequence[Member], dst: Path, calibration: EnsembleCalibration | None = None
) -> Path:
    """The ensemble folder under `dst`: member_<i>/ (checkpoint, calibration) and members.json
    (with the ensemble's own temperature; 1, the plain mean, until `calibration` is given)."""

    if not members:
        raise EnsembleError("an ensemble needs at least one member")
    dst.mkdir(parents=True, exist_ok=True)
    listed = []
    for i, m in enumerate(members):
        folder = dst / f"member_{i}"
        folder.mkdir(exist_ok=True)
        shutil.copyfile(m.checkpoint, folder / MEMBER_CHECKPOINT)
        (folder / CALIBRATION_FILE).write_text(json.dumps({"temperature": m.temperature}))
        sha = sha256_file(folder / MEMBER_CHECKPOINT)
        listed.append(
            {
                "checkpoint": f"{folder.name}/{MEMBER_CHECKPOINT}",
                "sha256": sha,
                "temperature": m.temperature,
                "origin": m.origin,
            }
        )
    calibration = calibration or EnsembleCalibration.identity()
    doc = {
        "combine": COMBINE,
        "temperature": calibration.temperature,
        "calibration": calibration.to_json(),
        "members": listed,
    }
    path = dst / MEMBERS_FILE
    path.write_text(json.dumps(doc, indent=2))
    return path


def member_of(ref: ModelRef | str, dst: Path, tracking_uri: str | None) -> Member:
    """Download one member (a run id, runs:/, models:/ or a checkpoint path) with its temperature."""
    ref = as_model_ref(ref)
    if isinstance(ref, EnsembleRef):
        raise EnsembleError(f"{ref} is itself an ensemble: give its members instead")
    dst.mkdir(parents=True, exist_ok=True)
    path, source = local_checkpoint(ref, dst, tracking_uri)
    if path.name == MEMBERS_FILE:
        raise EnsembleError(f"{ref} is itself an ensemble: give its members instead")
    return Member(path, calibrated_temperature(path), source.resolved)


def seen_in_training(member: pd.DataFrame, evaluation: pd.DataFrame) -> dict[str, int]:
    """How many of `evaluation`'s dev and test images a member trained on: the same key, an
    identical file (fingerprint) or the same lesion; an ensemble scored on them would flatter."""
    seen = seen_reasons(trained_rows(member), evaluation) != UNSEEN
    return {s: int((seen & (evaluation["split"] == s)).sum()) for s in ("dev", "test")}


def check_members_unseen(members: Mapping[str, pd.DataFrame], evaluation: pd.DataFrame) -> None:
    """Refuse an ensemble whose members trained on the images it is judged on."""
    for name, manifest in members.items():
        leaked = {s: n for s, n in seen_in_training(manifest, evaluation).items() if n}
        if leaked:
            counts = ", ".join(f"{n} {s}" for s, n in leaked.items())
            raise EnsembleError(
                f"member {name} trained on {counts} images of the evaluation manifest (same key,"
                " file or lesion): its score there would flatter the ensemble. Ensemble runs"
                " trained on one manifest's train split, or the fold models of a `skin cv` whose"
                " folds left dev out (since #21; re-run an older cross-validation)"
            )


# --------------------------------------------------------------------------- evaluation


@dataclass
class EnsembleScores:
    """An ensemble's evaluation: metrics (with intervals), per-split predictions, thresholds."""

    metrics: dict[str, float]
    predictions: dict[str, pd.DataFrame]
    operating: dict[str, object]
    abstention: dict[str, Any] = field(default_factory=dict)  # abstention.json


def score_split(predictor: EnsemblePredictor, rows: pd.DataFrame) -> np.ndarray:
    """The ensemble's probabilities for manifest rows (fetched from each row's source)."""
    probs = np.full((len(rows), len(predictor.classes)), np.nan)
    for source, at in rows.groupby("source").indices.items():
        scored = predictor.score(rows["key"].iloc[at].tolist(), open_store(str(source)).get)
        probs[at] = scored[[f"prob_{c}" for c in predictor.classes]].to_numpy()
    return probs


def evaluate_ensemble(
    probs: Mapping[str, tuple[pd.DataFrame, np.ndarray]],
    classes: Sequence[str],
    *,
    n_resamples: int,
    seed: int,
    malignant: Sequence[str],
    coverage: float | None = None,
    temperature: float = 1.0,
) -> EnsembleScores:
    """Metrics with lesion-resampled intervals per split (rows, probabilities), and the
    operating points chosen on dev, read on test, as a single run's evaluation gives them; with
    `coverage`, the UNK rule (msp of the probabilities given: what the ensemble serves, after its
    `temperature`) chosen on dev's images too."""
    metrics: dict[str, float] = {}
    predictions, labelled = {}, {}
    for split, (rows, p) in probs.items():
        ok = np.isfinite(p).all(axis=1)
        rows, p = rows[ok].reset_index(drop=True), p[ok]
        y = rows["label"].map({c: i for i, c in enumerate(classes)}).to_numpy(dtype=np.int64)
        groups = rows.get("lesion_id")
        metrics |= flat_metrics(split, split_metrics(y, p, classes))
        iv = confidence_intervals(y, p, groups, n_resamples, seed)
        metrics |= flat_intervals(split, iv, classes)
        predictions[split] = split_predictions(rows, p, classes)
        labelled[split] = (y, p, groups)
    operating: dict[str, object] = {}
    if {"dev", "test"} <= set(labelled):
        (dy, dp, _), (ty, tp, tg) = labelled["dev"], labelled["test"]
        points = operating_points(
            (dy, dp), (ty, tp), classes, tg, malignant=malignant, n_resamples=n_resamples, seed=seed
        )
        positives = {
            n: [classes[c] for c in cols] for n, cols in questions(classes, malignant).items()
        }
        operating = operating_points_json(points, positives)
    abstention: dict[str, Any] = {}
    if coverage is not None and "dev" in labelled:
        known = {s: (y, p, msp_of_probs(p)) for s, (y, p, _) in labelled.items()}
        rule, found = abstention_measures(known, {}, "msp", coverage)
        metrics |= found
        abstention = abstention_json(
            rule, coverage, temperature, known["dev"][2], formula=SERVED_FORMULA, measured=found
        )
        predictions = {s: with_ood_scores(f, known[s][2], rule) for s, f in predictions.items()}
    return EnsembleScores(metrics, predictions, operating, abstention)


def summary_markdown(metrics: Mapping[str, float], members: Sequence[str], dev_note: str) -> str:
    """The ensemble run's `report/summary.md`: what was averaged, on what dev, and the numbers."""
    lines = [
        f"# Ensemble of {len(members)} models",
        "",
        "Probabilities: the mean of each member's calibrated probabilities, calibrated again by"
        f" the ensemble's own temperature (T = {metrics.get('ensemble_temperature', 1.0):.3g},"
        " fitted on dev).",
        "",
        *[f"- member {i}: `{m}`" for i, m in enumerate(members)],
        "",
        f"Dev: {dev_note}",
        "",
        metrics_table_text(metrics).to_markdown(),
        "",
    ]
    unk = abstention_line(metrics)
    if unk is not None:
        lines += [f"Unknown lesions (msp of the averaged probabilities): {unk}", ""]
    return "\n".join(lines)


SAME_DEV = (
    "the manifest's dev images, which none of the members trained on (a fold ensemble's folds"
    " are dealt over train only), scored by the ensemble: its temperature, UNK threshold and"
    " operating points are chosen there"
)


def ensemble_stage(
    refs: Sequence[ModelRef | str],
    manifest_uri: str,
    cfg: PipelineConfig,
    tracker: Tracker,
) -> EvalOutcome:
    """Average `refs` (run ids, runs:/ or models:/ URIs) into one model, calibrate it and choose
    its thresholds on the manifest's dev as scored by the ensemble itself, evaluate it on dev and
    test like a run (metrics with intervals, operating points, predictions), log it as one
    image-in model. The members must not have trained on dev or test (`check_members_unseen`)."""
    paths = RunPaths(cfg.work_dir, tracker.run_id)
    members, predictor = _assemble(refs, paths, cfg, tracker.run_id)
    manifest = mf.read(manifest_uri)
    rows = {s: manifest[manifest["split"] == s].reset_index(drop=True) for s in ("dev", "test")}
    labels = rows["dev"]["label"].map({c: i for i, c in enumerate(predictor.classes)})
    means = {s: score_split(predictor, r) for s, r in rows.items()}  # members' mean: T = 1 yet
    served, calibration = served_probabilities(means, labels.to_numpy())
    write_calibration(paths.root / FOLDER / MEMBERS_FILE, calibration)
    if cfg.predict.ood_score != "msp":
        log.warning(
            "predict.ood_score is %s, but an ensemble has no logits: it abstains on msp of its"
            " averaged probabilities",
            cfg.predict.ood_score,
        )
    e = cfg.evaluate
    scores = evaluate_ensemble(
        {s: (rows[s], served[s]) for s in rows},
        predictor.classes,
        n_resamples=e.bootstrap,
        seed=cfg.split.seed,
        malignant=e.malignant,
        coverage=cfg.predict.abstain_coverage,
        temperature=calibration.temperature,
    )
    scores.metrics["ensemble_temperature"] = calibration.temperature
    if scores.abstention:
        scores.abstention["chosen_on"] = f"dev known images: {SAME_DEV}"
    origins = [m.origin for m in members]
    _write_report(paths, cfg, manifest, scores, origins, SAME_DEV, calibration)
    return _log_ensemble(tracker, paths, cfg, manifest, scores, origins, manifest_uri)


def _assemble(
    refs: Sequence[ModelRef | str], paths: RunPaths, cfg: PipelineConfig, run_id: str
) -> tuple[list[Member], EnsemblePredictor]:
    """The members downloaded into the run's ensemble folder, loaded as one (uncalibrated) model."""

    uri = resolve_tracking_uri(cfg.tracking.tracking_uri)
    members = [member_of(r, paths.root / "download" / str(i), uri) for i, r in enumerate(refs)]
    members_file = write_members(members, paths.root / FOLDER)
    source = ModelSource(str(RunRef(run_id)), str(members_file), str(members_file), run_id)
    predictor = load_ensemble(
        members_file,
        pick_device(cfg.train.device),
        source,
        tta=cfg.evaluate.tta,
        batch_size=cfg.train.batch_size,
    )
    return members, predictor


def _log_ensemble(
    tracker: Tracker,
    paths: RunPaths,
    cfg: PipelineConfig,
    manifest: pd.DataFrame,
    scores: EnsembleScores,
    origins: Sequence[str],
    manifest_uri: str,
) -> EvalOutcome:
    """Metrics, report, tags and (with `tracking.log_model`) the image-in model, in the run."""
    tracker.log_metrics({k: v for k, v in scores.metrics.items() if np.isfinite(v)})
    tracker.log_artifact(paths.report, "report")
    tracker.set_tags(
        {
            "skin.ensemble": str(len(origins)),
            "skin.ensemble_dev": SAME_DEV[:250],
            "manifest_uri": manifest_uri,
            "manifest_hash": mf.manifest_hash(manifest),
        }
    )
    tracker.set_description(summary_markdown(scores.metrics, origins, SAME_DEV))
    model_uri = None
    if cfg.tracking.log_model:
        # skin.serve.pyfunc imports MLflow: imported only when a model is logged (see stages._log_model)
        from skin.serve import pyfunc as serving

        model_uri = serving.log_ensemble(tracker, paths.root / FOLDER / MEMBERS_FILE, paths.report)
    return EvalOutcome(
        tracker.run_id, scores.metrics, "ensemble", str(paths.report), model_uri=model_uri
    )


def _write_report(
    paths: RunPaths,
    cfg: PipelineConfig,
    manifest: pd.DataFrame,
    scores: EnsembleScores,
    members: Sequence[str],
    note: str,
    calibration: EnsembleCalibration | None = None,
) -> None:
    """The run folder as a run's: config, split counts, report/ (metrics, predictions, summary,
    the ensemble's calibration.json)."""
    paths.report.mkdir(parents=True, exist_ok=True)
    paths.config.write_text(config_to_yaml(cfg))
    mf.summary(manifest).to_csv(paths.split_counts)
    (paths.report / "metrics.json").write_text(json.dumps(scores.metrics, indent=2, sort_keys=True))
    for split, frame in scores.predictions.items():
        frame.to_parquet(paths.report / f"predictions_{split}.parquet", index=False)
    if scores.operating:
        (paths.report / "operating_points.json").write_text(json.dumps(scores.operating, indent=2))
    (paths.report / "summary.md").write_text(summary_markdown(scores.metrics, members, note))
    if calibration is not None:  # the ensemble's own temperature (members.json holds it too)
        doc = {"temperature": calibration.temperature, **calibration.to_json()}
        (paths.report / CALIBRATION_FILE).write_text(json.dumps(doc, indent=2))
    if scores.abstention:  # in the report and beside members.json, where prediction reads it
        text = json.dumps(scores.abstention, indent=2)
        (paths.report / ABSTENTION_FILE).write_text(text)
        (paths.root / FOLDER / ABSTENTION_FILE).write_text(text)
