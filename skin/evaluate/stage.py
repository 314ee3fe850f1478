"""The evaluate stage: a checkpoint and a manifest in; metrics, intervals, operating points and reports out.

It reads its inputs by reference and records through a Tracker, so it runs the same from the CLI,
inside a Prefect task, or alone on a GPU machine; the files go where `skin.base.runs.RunPaths` says.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch

from skin.base.config import PipelineConfig
from skin.base.progress import Factory as Progress
from skin.base.progress import silent
from skin.base.runs import RunPaths
from skin.data import manifest as mf
from skin.evaluate import report
from skin.evaluate.gallery import write_gallery
from skin.evaluate.outcome import EvalOutcome  # cached results pickled before name it here
from skin.serve.explain import ExplainError
from skin.serve.export import export_onnx
from skin.serve.predict import checkpoint_predictor, resolved_model
from skin.serve.tta import DEFINITION as TTA_DEFINITION
from skin.serve.tta import probabilities as tta_probabilities
from skin.serve.tta import view_logits
from skin.stats import abstain
from skin.stats.bootstrap import confidence_intervals, flat_intervals
from skin.stats.calibration import Calibration, calibrate, calibration_report
from skin.stats.metrics import SplitMetrics, bias_variance, diagnosis, flat_metrics, split_metrics
from skin.stats.operating import flat_operating, operating_points, questions
from skin.stats.slices import slice_metrics, slice_table
from skin.track.refs import CheckpointRef
from skin.track.tracking import Tracker
from skin.train import checkpoint as ckpt
from skin.train.datasets import EvalImages, Normalize, make_loader
from skin.train.feeds import (
    SplitImages,
    index_splits,
)
from skin.train.loop import (
    amp_dtype,
    pick_device,
)
from skin.train.model import (
    input_spec,
    load_model_from_checkpoint,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- evaluate


class Predicted(NamedTuple):
    """One split's predictions in image order: the mean logits over the TTA views (what the
    temperature is fitted on), their raw probabilities (`skin.serve.tta.probabilities`, T = 1), and
    the true labels."""

    probs: np.ndarray
    labels: np.ndarray
    logits: np.ndarray


def _mean_logits(
    net: torch.nn.Module,
    batches: Any,
    prep: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
    tta: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean TTA logits (`skin.serve.tta.view_logits`) and labels for every batch (net in eval mode)."""
    net.eval()
    dtype = amp_dtype(device, True)
    logits, labels = [], []
    for x, y in batches:
        x = x.to(device, non_blocking=True)
        logits.append(view_logits(net, x, prep, tta=tta, dtype=dtype).cpu())
        labels.append(y)
    return torch.cat(logits).numpy(), torch.cat(labels).numpy()


def predict_split(
    model: torch.nn.Module,
    data: SplitImages,
    split: str,
    device: torch.device,
    batch_size: int,
    tta: bool = False,
) -> Predicted:
    """Probabilities and logits for one split; with TTA as `skin.serve.tta` defines it (8 views)."""
    return predict_rows(model, data, data.rows[split], data.labels[split], device, batch_size, tta)


def predict_rows(
    model: torch.nn.Module,
    data: SplitImages,
    rows: np.ndarray,
    labels: np.ndarray,
    device: torch.device,
    batch_size: int,
    tta: bool = False,
) -> Predicted:
    """`predict_split` for any cache rows (the held-out class's images, say)."""
    ds = EvalImages(data.cache, rows, labels, data.spec.size)
    norm = Normalize(data.spec).to(device)
    loader = make_loader(ds, batch_size=batch_size, shuffle=False, seed=0)
    z, y = _mean_logits(model, loader, norm, device, tta)
    return Predicted(tta_probabilities(z), y, z)


def evaluate_stage(
    manifest_uri: str,
    checkpoint_path: str,
    cfg: PipelineConfig,
    tracker: Tracker,
    *,
    progress: Progress = silent,
) -> EvalOutcome:
    """Score the best checkpoint on train, dev and test: metrics with intervals, calibration,
    operating points and slices; log them, write the reports, describe the run."""
    manifest = mf.read(manifest_uri)
    device = pick_device(cfg.train.device)
    model, state = load_model_from_checkpoint(checkpoint_path, device)
    data = index_splits(manifest, cfg, input_spec(model, cfg.train.image_size), progress)
    scored = score_splits(model, data, device, cfg.train.batch_size, cfg.evaluate.tta)
    metrics = _eval_metrics(scored.results, cfg.evaluate.human_level, state["epoch"])
    if cfg.evaluate.tta and "test" in scored.results:
        metrics |= _tta_gain(model, data, device, cfg.train.batch_size, scored.results["test"])
    unknown = _unknown_logits(model, data, device, cfg.train.batch_size, cfg.evaluate.tta)
    if cfg.data.holdout_class and "test" not in unknown:
        log.warning(
            "held-out class %s has no test images: no UNK AUROC, recall or 9-category score",
            cfg.data.holdout_class,
        )
    found, findings = evaluation_findings(
        scored, split_rows(manifest, data), cfg, unknown, split_rows(manifest, data, held_out=True)
    )
    metrics |= found
    tracker.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)})
    reading = diagnosis(metrics["bias"], metrics["variance"])
    paths = RunPaths(cfg.work_dir, tracker.run_id)
    history = run_history(paths, state)
    facts = _run_facts(cfg, manifest)
    report.write_reports(paths.report, scored, metrics, reading, history, facts, findings)
    _gallery(paths.report, model, data, scored, findings, cfg)
    tracker.log_artifact(paths.report, "report")
    tracker.set_tags({"diagnosis": reading})
    tracker.set_description(report.summary_head(paths.report / "summary.md"))
    model_uri = None
    # The exact weights a registered version will serve; a held-out-class model (fewer
    # classes) is an experiment, never a candidate for the registry.
    if cfg.tracking.log_model and cfg.data.holdout_class is None:
        model_uri = _log_model(tracker, Path(checkpoint_path))
    if cfg.tracking.export_onnx:
        _export_onnx(Path(checkpoint_path), paths, tracker)
    return EvalOutcome(tracker.run_id, metrics, reading, str(paths.report), model_uri=model_uri)


def _gallery(
    out: Path,
    model: torch.nn.Module,
    data: SplitImages,
    scored: report.Scored,
    findings: report.Findings,
    cfg: PipelineConfig,
) -> None:
    """Test's error gallery with class-activation maps (skin.evaluate.gallery), on the served
    probabilities; melanoma misses at the MEL threshold for 90 % specificity on their own sheet."""
    if "test" not in scored.probs or findings.calibrated_test is None:
        return
    mel90 = next(
        (p.threshold for p in findings.operating if p.name == "mel" and p.target == 0.90), None
    )
    try:
        write_gallery(
            out, "test", model, data.spec, data.cache.images, data.rows["test"],
            scored.probs["test"][1], findings.calibrated_test, scored.classes, cfg.explain,
            mel_threshold=mel90, tta=cfg.evaluate.tta,
        )  # fmt: skip
    except ExplainError as err:  # an architecture without a mappable layer: the metrics stand
        log.warning("no error gallery: %s", err)


def _log_model(tracker: Tracker, checkpoint: Path) -> str | None:
    """The image-in pyfunc into the run. skin.serve.pyfunc is imported here, not at the top: it
    imports MLflow, which this module (and a GPU box without MLflow) must not need."""
    from skin.serve import pyfunc as serving  # MLflow's pyfunc: only when a model is logged

    return serving.log_model(tracker, checkpoint)


def _export_onnx(checkpoint: Path, paths: RunPaths, tracker: Tracker) -> None:
    """The evaluated weights as ONNX in the run (`onnx/model.onnx`), calibration included."""
    paths.onnx.unlink(missing_ok=True)  # a re-evaluation replaces the run's own export
    with resolved_model(CheckpointRef(str(checkpoint))) as (path, source):
        predictor = checkpoint_predictor(path, torch.device("cpu"), source)
    export_onnx(predictor, paths.onnx)
    tracker.log_artifact(paths.onnx, "onnx")


def score_splits(
    model: torch.nn.Module, data: SplitImages, device: torch.device, batch_size: int, tta: bool
) -> report.Scored:
    """Probabilities, labels and metrics of every split that has images."""
    probs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    logits: dict[str, np.ndarray] = {}
    results: dict[str, SplitMetrics] = {}
    for split in mf.SPLITS:
        if len(data.rows[split]) == 0:
            continue
        p, labels, z = predict_split(model, data, split, device, batch_size, tta=tta)
        probs[split], logits[split] = (p, labels), z
        results[split] = split_metrics(labels, p, data.classes)
    images, test_rows = data.cache.images, data.rows["test"]
    return report.Scored(data.classes, results, probs, images, test_rows, logits)


def _unknown_logits(
    model: torch.nn.Module, data: SplitImages, device: torch.device, batch_size: int, tta: bool
) -> dict[str, np.ndarray]:
    """Logits of the held-out class's dev and test images (none without a held-out class)."""
    return {
        split: predict_rows(
            model, data, rows, np.zeros(len(rows), np.int64), device, batch_size, tta
        ).logits
        for split, rows in data.unknown.items()
        if len(rows)
    }


def split_rows(
    manifest: pd.DataFrame, data: SplitImages, held_out: bool = False
) -> dict[str, pd.DataFrame]:
    """Each split's manifest rows in the order of its predictions (its cache rows' keys); with
    `held_out`, the held-out class's rows instead (in the order of their logits)."""
    by_key = manifest.set_index("key")
    rows = data.unknown if held_out else data.rows
    return {s: by_key.loc[data.cache.keys[r]].reset_index() for s, r in rows.items()}


def evaluation_findings(
    scored: report.Scored,
    rows: dict[str, pd.DataFrame],
    cfg: PipelineConfig,
    unknown: dict[str, np.ndarray] | None = None,
    held_rows: dict[str, pd.DataFrame] | None = None,
) -> tuple[dict[str, float], report.Findings]:
    """Intervals on every split and the temperature from dev (judged: T = 1 when rejected);
    the abstention threshold from dev (read on `unknown`, the held-out class's logits per split,
    when there are any; `held_rows` their manifest rows, written with the predictions); with
    test, calibration there, operating points (thresholds from dev) and slices. Every threshold
    is chosen on the served probabilities: softmax(mean TTA logits / served T)."""
    e, seed = cfg.evaluate, cfg.split.seed
    groups = {s: r.get("lesion_id") for s, r in rows.items()}  # resampled whole
    metrics = interval_metrics(scored, groups, e.bootstrap, seed)
    calibration, fit = _temperature(scored, e.tta)
    t = fit.temperature
    metrics |= {"temperature": t, "temperature_accepted": float(fit.accepted)}
    metrics["temperature_fitted"] = fit.fitted
    found, abstention = abstention_findings(scored, unknown or {}, t, cfg)
    metrics |= found
    rule = abstain.read_abstention(abstention, "evaluation")
    held = {s: (held_rows[s], z) for s, z in (unknown or {}).items() if s in (held_rows or {})}
    predictions = prediction_frames(scored, rows, held, t, rule)
    if "test" not in scored.probs:
        return metrics, report.Findings(predictions, calibration, abstention=abstention)
    cal, calibrated = _test_calibration(scored, calibration)
    dev_labels, test_labels = scored.probs["dev"][1], scored.probs["test"][1]
    # Thresholds on the calibrated probabilities: what `skin predict` and the served model output.
    dev_calibrated = tta_probabilities(scored.logits["dev"], t)
    points = operating_points(
        (dev_labels, dev_calibrated),
        (test_labels, calibrated),
        scored.classes,
        groups["test"],
        malignant=e.malignant,
        n_resamples=e.bootstrap,
        seed=seed,
    )
    mel90 = next((p.threshold for p in points if p.name == "mel" and p.target == 0.90), None)
    slices = _slices(scored, calibrated, rows["test"], groups["test"], cfg, mel90)
    metrics |= cal | flat_operating(points, "test")
    if slices is not None:
        metrics |= slice_metrics(slices, "test")
    positives = {
        name: [scored.classes[c] for c in cols]
        for name, cols in questions(scored.classes, e.malignant).items()
    }
    findings = report.Findings(
        predictions, calibration, calibrated, points, positives, slices, abstention
    )
    return metrics, findings


def prediction_frames(
    scored: report.Scored,
    rows: dict[str, pd.DataFrame],
    held: dict[str, tuple[pd.DataFrame, np.ndarray]],
    temperature: float,
    rule: abstain.Abstention,
) -> dict[str, pd.DataFrame]:
    """Each split's predictions file: its images, then the held-out class's (`held`: rows and
    logits per split), each with the served (calibrated) and raw probabilities, the mean TTA
    logits, the OOD score and the UNK answer: every logged number can be recomputed from it."""

    def frame(r: pd.DataFrame, z: np.ndarray, raw: np.ndarray, held_out: bool) -> pd.DataFrame:
        served = tta_probabilities(z, temperature)
        out = report.predictions_frame(r, served, scored.classes)
        out = with_ood_scores(out, abstain.ood_scores(z, temperature, rule.kind), rule)
        return report.with_raw_scores(out, raw, z, scored.classes, held_out=held_out)

    frames = {}
    for split, z in scored.logits.items():
        parts = [frame(rows[split], z, scored.probs[split][0], False)]
        if split in held:
            r, hz = held[split]
            parts.append(frame(r, hz, tta_probabilities(hz), True))
        frames[split] = pd.concat(parts, ignore_index=True)
    return frames


def abstention_findings(
    scored: report.Scored, unknown: dict[str, np.ndarray], temperature: float, cfg: PipelineConfig
) -> tuple[dict[str, float], dict[str, Any]]:
    """The UNK threshold chosen on dev known images for `predict.abstain_coverage`, read on dev
    and test (with the held-out class's images as unknowns); abstention.json's content. With
    unknowns, also every score kind's AUROC (`<split>_unk_auroc_energy`, `_msp`: the evidence
    for the choice of score)."""
    kind, coverage = cfg.predict.ood_score, cfg.predict.abstain_coverage

    def score(z: np.ndarray, k: str = kind) -> np.ndarray:
        return abstain.ood_scores(z, temperature, k)

    splits = [s for s in ("dev", "test") if s in scored.probs]
    known = {s: (scored.probs[s][1], scored.probs[s][0], score(scored.logits[s])) for s in splits}
    unknown_scores = {s: score(z) for s, z in unknown.items()}
    rule, metrics = abstention_measures(known, unknown_scores, kind, coverage)
    for split in (s for s in splits if s in unknown):
        for k in abstain.SCORE_KINDS:
            metrics[f"{split}_unk_auroc_{k}"] = abstain.auroc(
                score(scored.logits[split], k), score(unknown[split], k)
            )
    doc = abstain.abstention_json(
        rule,
        coverage,
        temperature,
        known["dev"][2],
        holdout_class=cfg.data.holdout_class,
        tta=cfg.evaluate.tta,  # the threshold holds for logits averaged the same way
        unknown_images={s: len(u) for s, u in unknown.items()},
        measured=metrics,
    )
    return metrics, doc


def abstention_measures(
    known: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    unknown: dict[str, np.ndarray],
    kind: str,
    coverage: float,
) -> tuple[abstain.Abstention, dict[str, float]]:
    """The rule whose threshold accepts `coverage` of dev's known images, and what it gives on
    each split of `known` (labels, probabilities, OOD scores), with that split's `unknown`
    images' scores if any: `dev_abstain_threshold`, `dev_abstain_coverage`, `<split>_abstain_rate`,
    `<split>_accepted_accuracy`, `<split>_known_accuracy` (and `_unk_*` with unknowns)."""
    rule = abstain.Abstention(kind, abstain.coverage_threshold(known["dev"][2], coverage))
    metrics = {"dev_abstain_threshold": rule.threshold}
    for split, images in known.items():
        metrics |= abstain.abstention_metrics(split, rule, images, unknown.get(split))
    metrics["dev_abstain_coverage"] = 1.0 - metrics["dev_abstain_rate"]
    return rule, metrics


def with_ood_scores(
    frame: pd.DataFrame, scores: np.ndarray, rule: abstain.Abstention
) -> pd.DataFrame:
    """A split's predictions with each image's `ood_score` and `abstained` (answered UNK)."""
    return frame.assign(ood_score=scores, abstained=rule.abstains(scores))


def interval_metrics(
    scored: report.Scored, groups: dict[str, pd.Series | None], n_resamples: int, seed: int
) -> dict[str, float]:
    """`<split>_<metric>_ci_low/_ci_high` per split (no AUC interval on train: costly, unread)."""
    out: dict[str, float] = {}
    for split, (p, y) in scored.probs.items():
        iv = confidence_intervals(y, p, groups[split], n_resamples, seed, auc=split != "train")
        out |= flat_intervals(split, iv, scored.classes)
    return out


def _temperature(scored: report.Scored, tta: bool) -> tuple[dict[str, Any], Calibration]:
    """The temperature fitted on dev logits and judged (`calibrate`: T = 1 kept when the fit is
    rejected), as calibration.json records it: `temperature` is the one served."""
    dev_y = scored.probs["dev"][1]
    fit = calibrate(scored.logits["dev"], dev_y)
    doc = {
        "temperature": fit.temperature,
        "fitted_on": "dev",
        "dev_images": len(dev_y),
        "logits": "mean over the 8 TTA views" if tta else "single view",
        "use": f"probabilities = {TTA_DEFINITION}",
    }
    return doc | fit.to_json(), fit


def _test_calibration(
    scored: report.Scored, calibration: dict[str, Any]
) -> tuple[dict[str, float], np.ndarray]:
    """Test ECE and log loss after the temperature (added to `calibration`); test probabilities."""
    t, logits = calibration["temperature"], scored.logits["test"]
    found = calibration_report(logits, scored.probs["test"][1], t)
    calibration["test"] = found
    metrics = {
        "test_ece_calibrated": found["ece_after"],
        "test_log_loss_calibrated": found["log_loss_after"],
    }
    return metrics, tta_probabilities(logits, t)


def _slices(
    scored: report.Scored,
    probs: np.ndarray,
    rows: pd.DataFrame,
    groups: pd.Series | None,
    cfg: PipelineConfig,
    mel_threshold: float | None,
) -> pd.DataFrame | None:
    """The test slice table (on `probs`, the calibrated test probabilities) when the manifest
    carries patient metadata, else None."""
    present = [c for c in report.METADATA if c in rows and rows[c].notna().any()]
    if not present:
        return None
    if rows["source"].nunique() > 1:
        present.append("source")
    y = scored.probs["test"][1]
    return slice_table(
        rows[present],
        y,
        probs,
        scored.classes,
        groups,
        min_size=cfg.evaluate.min_slice_size,
        n_resamples=cfg.evaluate.bootstrap,
        seed=cfg.split.seed,
        mel_threshold=mel_threshold,
    )


def run_history(paths: RunPaths, state: dict[str, Any]) -> list[dict[str, Any]]:
    """The whole training's history (last.pt's), not only up to the best epoch (best.pt's)."""
    history = state.get("history", [])
    if paths.last_checkpoint.is_file():
        last = ckpt.load(paths.last_checkpoint).get("history", [])
        if len(last) >= len(history):
            return last
    return history


def _eval_metrics(
    results: dict[str, SplitMetrics], human_level: float, best_epoch: int
) -> dict[str, float]:
    """Every split's metrics flattened, the bias/variance numbers, human level and best epoch."""
    metrics: dict[str, float] = {}
    for split, m in results.items():
        metrics |= flat_metrics(split, m)
    acc = {s: results[s].scalars["accuracy"] if s in results else float("nan") for s in mf.SPLITS}
    metrics |= bias_variance(acc["train"], acc["dev"], acc["test"], human_level)
    metrics["human_level"] = human_level
    metrics["best_epoch"] = float(best_epoch)
    return metrics


def _tta_gain(
    model: torch.nn.Module,
    data: SplitImages,
    device: torch.device,
    batch_size: int,
    with_tta: SplitMetrics,
) -> dict[str, float]:
    """Test balanced accuracy without TTA, and what TTA gained over it."""
    plain, labels, _ = predict_split(model, data, "test", device, batch_size, tta=False)
    base = split_metrics(labels, plain, data.classes).scalars["balanced_accuracy"]
    gain = with_tta.scalars["balanced_accuracy"] - base
    return {"test_balanced_accuracy_no_tta": base, "tta_gain": gain}


def _run_facts(cfg: PipelineConfig, manifest: pd.DataFrame) -> report.RunFacts:
    """The data and recipe the run summary names."""
    return report.RunFacts(
        dataset=str(manifest["source"].iloc[0]),
        manifest_hash=mf.manifest_hash(manifest),
        counts=mf.summary(manifest),
        recipe=report.recipe_line(cfg),
        n_resamples=cfg.evaluate.bootstrap,
    )
