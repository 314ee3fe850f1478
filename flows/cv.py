"""Cross-validation flow: lesion-grouped folds over train, one model per fold, pooled scores.

The data stages run once; each fold is a versioned manifest (train = the other folds, dev = this
fold, test = the held-out test; the manifest's dev in none) trained and evaluated by the
pipeline's own tasks. The fold runs hang under one parent MLflow run holding the cross-validated
metrics; the fold models can be averaged into an ensemble, calibrated, thresholded, evaluated and
gated on the manifest's dev, which none of them trained on, like any run (`skin ensemble`).
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import call, data_stages, flow_config, resolve_config, shard_stages
from flows.outcomes import CVResult, EnsembleResult
from skin.base.config import PipelineConfig
from skin.base.runs import RunPaths
from skin.data import manifest as mf
from skin.data.location import DatasetState
from skin.data.stages import ManifestRef, manifest_ref, save_manifest
from skin.evaluate.provenance import run_manifests
from skin.evaluate.stage import EvalOutcome
from skin.search.folds import (
    FOLD_METRICS,
    CVOutcome,
    assign_folds,
    cv_metrics,
    fold_manifest,
    out_of_fold,
)
from skin.track.refs import RUN_ID, ModelRef, RunRef, parse_model_ref
from skin.track.tracking import PARENT_TAG, MLflowRegistry, MLflowTracker, tracked_run
from tasks.caching import IO_RETRIES, Names, keyed_on
from tasks.training import _tags, decode_images_task, evaluate_task, register_task, train_task

CV_TAG = "skin.cv"  # on the parent run: the number of folds
FOLD_TAG = "skin.cv_fold"  # on a fold's run: its fold number
MEMBERS_TAG = "skin.cv_runs"  # on the parent run: the fold runs, in fold order
ENSEMBLE_TAG = "skin.cv_ensemble"  # on the parent run: the fold ensemble's run (nested under it)
FOLD_SECTIONS = ("split.seed", "split.group_by_lesion", "split.balance", "split.majority_class")


@task(
    name="fold-manifests",
    cache_policy=keyed_on(
        "manifest.hash",
        "folds",
        config_sections=(*FOLD_SECTIONS, "data.uri", "work_dir", "shared.uri"),
        names=Names(files=("uri",)),
    ),
    **IO_RETRIES,
)
def fold_manifests_task(
    manifest: ManifestRef, config: PipelineConfig, folds: int
) -> list[ManifestRef]:
    """One manifest per fold, each saved under its own hash (train dealt into folds, grouped by
    lesion and duplicate, stratified by class; test untouched; dev left out for the ensemble)."""
    df = mf.read(manifest.uri)
    s = config.split
    assigned = assign_folds(df, folds, s.seed, s.group_by_lesion)
    lineage = {"listing_fingerprint": manifest.listing_fingerprint}
    return [
        save_manifest(
            fold_manifest(
                df, assigned, f, balance=s.balance, majority_class=s.majority_class, seed=s.seed
            ),
            DatasetState.of(config),
            latest=False,
            stage=f"fold{f + 1}of{folds}",
            lineage=lineage,
        )
        for f in range(folds)
    ]


def cross_validate(
    cfg: PipelineConfig,
    manifest: ManifestRef,
    folds: int,
    stages: dict[str, str] | None = None,
    *,
    refresh: bool = False,
    parent_run_id: str | None = None,
    one_at_a_time: bool = False,
) -> CVOutcome:
    """Fold manifests → decode once → train and evaluate each fold (mapped tasks) → out-of-fold
    metrics, all recorded in a parent MLflow run (a new one, or `parent_run_id`'s) with the fold
    runs nested under it. Call it inside a flow; no MLflow run need be active."""
    stages = {} if stages is None else stages
    refs = call(
        fold_manifests_task, stages, refresh=refresh, manifest=manifest, config=cfg, folds=folds
    )
    if cfg.shared.uri:
        shard_stages(cfg, manifest, stages)
    call(decode_images_task, stages, refresh=refresh, manifest=manifest, config=cfg)  # shared
    registry = MLflowRegistry(cfg.tracking.tracking_uri)
    tags = {CV_TAG: str(folds), "manifest_uri": manifest.uri, "manifest_hash": manifest.hash}
    parent = parent_run_id or registry.create_run(
        cfg.tracking.experiment, f"cv-{folds}folds-{manifest.hash[:8]}", _tags(tags)
    )
    try:
        outcome = _folds(cfg, manifest, refs, stages, refresh, registry, parent, one_at_a_time)
        registry.record(parent, tags=tags)
    except BaseException:
        if parent_run_id is None:
            registry.end_run(parent, "FAILED")
        raise
    if parent_run_id is None:
        registry.end_run(parent)
    return outcome


def cv_score(
    cfg: PipelineConfig,
    manifest: ManifestRef,
    folds: int,
    *,
    parent_run_id: str | None = None,
    stages: dict[str, str] | None = None,
) -> float:
    """A config's cross-validated score: the pooled out-of-fold balanced accuracy over `folds`
    lesion-grouped folds of `manifest`'s train (what `skin sweep --cv K` ranks by)."""
    return cross_validate(cfg, manifest, folds, stages, parent_run_id=parent_run_id).score


def trial_score(
    cfg: PipelineConfig, manifest: ManifestRef, evaluated: EvalOutcome, *, folds: int, metric: str
) -> float:
    """A sweep trial's value by cross-validation (`skin sweep --cv K`): the pooled out-of-fold
    counterpart of the space's dev metric, the fold runs nested under the trial's own run. The
    folds train one after another: the trial holds one `gpu` slot, not K."""
    key = oof_metric(metric)
    outcome = cross_validate(
        cfg, manifest, folds, parent_run_id=evaluated.run_id, one_at_a_time=True
    )
    return float(outcome.metrics[key])


def oof_metric(metric: str) -> str:
    """The pooled out-of-fold name of a dev metric; refused before any training when none."""
    name = metric.removeprefix("dev_")
    if name not in FOLD_METRICS:
        raise ValueError(
            f"--cv scores out of fold: the space's metric {metric!r} has no out-of-fold"
            f" counterpart (use one of {[f'dev_{m}' for m in FOLD_METRICS]})"
        )
    return f"cv_oof_{name}"


def _folds(
    cfg: PipelineConfig,
    manifest: ManifestRef,
    refs: list[ManifestRef],
    stages: dict[str, str],
    refresh: bool,
    registry: MLflowRegistry,
    parent: str,
    one_at_a_time: bool = False,
) -> CVOutcome:
    """Train, then evaluate, every fold as mapped tasks (or one after another, inside a task
    that holds one accelerator); nest the runs; score out of fold.

    A fold's model is not logged as an MLflow model (an ensemble takes its checkpoint)."""
    serial = one_at_a_time
    trained = _gather(train_task, refresh, stages, serial, manifest=refs, config=unmapped(cfg))
    quiet = cfg.model_copy(
        update={"tracking": cfg.tracking.model_copy(update={"log_model": False})}
    )
    evaluated = _gather(
        evaluate_task,
        refresh,
        stages,
        serial,
        manifest=refs,
        run_id=[t.run_id for t in trained],
        checkpoint=[t.best_checkpoint for t in trained],
        config=unmapped(quiet),
    )
    runs = [t.run_id for t in trained]
    for i, run_id in enumerate(runs):
        registry.record(run_id, tags={PARENT_TAG: parent, FOLD_TAG: str(i)})
    frames = [
        pd.read_parquet(RunPaths(cfg.work_dir, r).report / "predictions_dev.parquet") for r in runs
    ]
    oof = out_of_fold(frames, runs, mf.read(manifest.uri))
    table = pd.DataFrame(
        [
            {"fold": i, "run_id": e.run_id, "manifest_uri": ref.uri, "manifest_hash": ref.hash}
            | {
                k: v
                for k, v in e.metrics.items()
                if k.startswith(("dev_", "test_")) and "_ci_" not in k
            }
            for i, (e, ref) in enumerate(zip(evaluated, refs, strict=True))
        ]
    )
    metrics = cv_metrics(table, oof, cfg.data.classes)
    out = Path(cfg.work_dir) / "cv" / parent
    out.mkdir(parents=True, exist_ok=True)
    oof.to_parquet(out / "oof_predictions.parquet", index=False)
    columns = [
        "fold",
        "run_id",
        "manifest_hash",
        *[c for c in table if c.startswith("dev_")],
        "manifest_uri",
    ]
    table[columns].to_csv(out / "folds.csv", index=False)
    registry.record(parent, metrics=metrics, tags={MEMBERS_TAG: ",".join(runs)}, files={"cv": out})
    return CVOutcome(
        parent_run_id=parent,
        folds=table.to_dict(orient="records"),
        metrics=metrics,
        oof_uri=str(out / "oof_predictions.parquet"),
        table_uri=str(out / "folds.csv"),
        manifest_uri=manifest.uri,
        manifest_hash=manifest.hash,
    )


def _gather(
    task_: Any, refresh: bool, stages: dict[str, str], serial: bool, **kwargs: Any
) -> list[Any]:
    """Map a task over the folds (or submit them one after another when `serial`), wait for
    all, note 'ran' or 'cached' as `call` does."""
    runner = task_.with_options(refresh_cache=True) if refresh else task_
    if serial:
        count = len(next(v for v in kwargs.values() if not isinstance(v, unmapped)))
        futures = []
        for i in range(count):
            args = {k: v.value if isinstance(v, unmapped) else v[i] for k, v in kwargs.items()}
            futures.append(runner.submit(**args))
            futures[-1].wait()
    else:
        futures = runner.map(**kwargs)
    results = [f.result() for f in futures]
    ran = any(f.state.name != "Cached" for f in futures)
    stages[task_.name] = "ran" if ran else "cached"
    return results


# --------------------------------------------------------------------------- ensembles


def ensemble_run(
    cfg: PipelineConfig,
    members: list[ModelRef],
    manifest: ManifestRef,
    *,
    register: bool = False,
    tags: dict[str, str] | None = None,
) -> EnsembleResult:
    """Average `members` into one model in a new MLflow run (calibrated, thresholded and
    evaluated on `manifest`'s dev as the ensemble scores it, and on its test), then, with
    `register`, through the promotion gate like any run. Fold models and runs alike: none may
    have trained on the dev or test."""
    from skin.search.ensemble import check_members_unseen, ensemble_stage

    check_members_unseen(_member_manifests(cfg, members), mf.read(manifest.uri))
    tracker = MLflowTracker(
        cfg.tracking.tracking_uri,
        cfg.tracking.experiment,
        run_name=f"ensemble-{len(members)}-{manifest.hash[:8]}",
        tags=_tags(tags),
    )
    with tracked_run(tracker):
        outcome = ensemble_stage(members, manifest.uri, cfg, tracker)
        outcome.url = tracker.url()
    registration = None
    if register and outcome.model_uri:
        registration = register_task(outcome.run_id, outcome.model_uri, cfg, manifest)
    members_given = [str(m) for m in members]  # as the user (or the cv's tag) named them
    return EnsembleResult(**asdict(outcome), members=members_given, registration=registration)


def _member_manifests(cfg: PipelineConfig, members: list[ModelRef]) -> dict[str, pd.DataFrame]:
    """Each member's training manifest, read through its MLflow run."""
    registry = MLflowRegistry(cfg.tracking.tracking_uri)
    with tempfile.TemporaryDirectory(prefix="skin-members-") as tmp:
        out, unknown = run_manifests(registry, members, Path(tmp))
    for ref in unknown:  # a checkpoint file: nothing records what it trained on
        get_run_logger().warning("member %s: its training data cannot be checked", ref)
    return out


def fold_ensemble(
    cfg: PipelineConfig, parent_run_id: str, *, register: bool = False
) -> EnsembleResult:
    """The fold models of a cross-validation (its parent run) as one ensemble, calibrated and
    thresholded on the manifest's dev, which the folds left out (see `skin.search.ensemble.SAME_DEV`);
    a cross-validation whose folds took dev in (made before #21) is refused by name. Its run is
    nested under the parent, which names it (`skin.cv_ensemble`)."""
    registry = MLflowRegistry(cfg.tracking.tracking_uri)
    tags = registry.run_tags(parent_run_id)
    if MEMBERS_TAG not in tags:
        raise ValueError(
            f"run {parent_run_id} is not a finished cross-validation (no {MEMBERS_TAG} tag)"
        )
    manifest = manifest_ref(tags["manifest_uri"])
    result = ensemble_run(
        cfg,
        [parse_model_ref(run_id) for run_id in tags[MEMBERS_TAG].split(",")],
        manifest,
        register=register,
        tags={"skin.cv_parent": parent_run_id, PARENT_TAG: parent_run_id},
    )
    registry.record(parent_run_id, tags={ENSEMBLE_TAG: result.run_id})
    return result


@flow(name="skin-ensemble", log_prints=True)
def ensemble_flow(
    runs: list[str] | None = None,
    cv_run: str | None = None,
    manifest: str | None = None,
    config_path: str | None = None,
    overrides: dict[str, Any] | None = None,
    register_model: bool = False,
) -> EnsembleResult:
    """Average runs (or a cross-validation's fold models) into one model, evaluate, gate."""
    cfg = resolve_config(config_path, overrides, None)
    if bool(runs) == bool(cv_run):
        raise ValueError(
            "give the members (runs) or a cross-validation's parent run (cv_run), one of them"
        )
    if cv_run:
        return fold_ensemble(cfg, cv_run, register=register_model)
    members = [parse_model_ref(r) for r in runs or []]  # the flow's boundary; not empty
    uri = manifest or _run_manifest(cfg, members[0])
    return ensemble_run(cfg, members, manifest_ref(uri), register=register_model)


def _run_manifest(cfg: PipelineConfig, ref: ModelRef) -> str:
    """The manifest the first member trained on (its run's `manifest_uri` tag)."""
    if not isinstance(ref, RunRef) or not RUN_ID.fullmatch(ref.run_id):
        raise ValueError(f"{ref}: give --manifest when the members are not runs")
    return MLflowRegistry(cfg.tracking.tracking_uri).run_tags(ref.run_id)["manifest_uri"]


# --------------------------------------------------------------------------- the flow


def summary_markdown(result: CVResult) -> str:
    """The Prefect artifact `skin-cv-summary`: per-fold and pooled numbers."""
    m = result.metrics
    rows = "\n".join(
        f"| {f['fold']} | `{f['run_id']}` | {f.get('dev_balanced_accuracy', float('nan')):.4f} |"
        for f in result.folds
    )
    return "\n".join(
        [
            f"# skin cv: {len(result.folds)} folds, parent run `{result.parent_run_id}`",
            "",
            "| fold | run | dev balanced accuracy |",
            "|---|---|---|",
            rows,
            "",
            f"Mean {m['cv_balanced_accuracy_mean']:.4f} ± {m.get('cv_balanced_accuracy_std', 0):.4f}"
            f" (std over folds); pooled out-of-fold {m['cv_oof_balanced_accuracy']:.4f}.",
            *(["", ensemble_line(result.ensemble)] if result.ensemble is not None else []),
        ]
    )


def ensemble_line(ensemble: EnsembleResult) -> str:
    """Where the fold ensemble is: its MLflow run (nested under the CV parent) and its score."""
    run = ensemble.run_id
    link = f"[`{run}`]({ensemble.url})" if ensemble.url else f"`{run}`"
    score = ensemble.metrics.get("test_balanced_accuracy")
    scored = f", test balanced accuracy {score:.4f}" if score is not None else ""
    reg = ensemble.registration
    registered = f"; registered v{reg.version} as {reg.alias}" if reg else ""
    return f"Fold ensemble: MLflow run {link}, nested under the CV parent{scored}{registered}."


@flow(name="skin-cv", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=1))
def cv_flow(
    data_uri: str | None = None,
    config_path: str | None = None,
    overrides: dict[str, Any] | None = None,
    folds: int = 5,
    refresh: bool = False,
    ensemble: bool = False,
    register_model: bool = False,
) -> CVResult:
    """Cross-validate the config on the dataset's train; with `ensemble` (or `register_model`,
    which gates it into the registry) the fold models become one ensemble model, calibrated,
    thresholded and gated on the dev the folds left out.

    Folds train one at a time here (one accelerator, one process's seeded RNG); another task
    runner (`cv_flow.with_options(task_runner=...)`, e.g. Dask) spreads them over machines.
    """
    log = get_run_logger()
    cfg = flow_config(config_path, overrides, data_uri, training=True)
    stages: dict[str, str] = {}
    _, manifest = data_stages(cfg, stages, refresh=refresh)
    outcome = cross_validate(cfg, manifest, folds, stages, refresh=refresh)
    log.info("cross-validated balanced accuracy %.4f (pooled out of fold)", outcome.score)
    fold_model = None
    if ensemble or register_model:
        fold_model = fold_ensemble(cfg, outcome.parent_run_id, register=register_model)
        log.info(ensemble_line(fold_model))
    result = CVResult(**asdict(outcome), stages=stages, ensemble=fold_model)
    create_markdown_artifact(key="skin-cv-summary", markdown=summary_markdown(result))
    return result
