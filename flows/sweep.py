"""The sweep flow: data stages once, then Optuna's trials through the same train and evaluate
tasks as `skin run`, each a child MLflow run of the sweep's run, bounded by the `gpu` slots."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
from filelock import FileLock
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, as_completed

from flows.common import call, data_stages, flow_config, resolve_config
from flows.outcomes import SweepResult
from skin.base.config import PipelineConfig, digest
from skin.base.runs import RunPaths, run_pointer
from skin.data.location import DatasetState
from skin.data.stages import ManifestRef, manifest_ref, set_latest
from skin.evaluate.stage import EvalOutcome
from skin.release.registry import Registration
from skin.search.sweep import (
    PARENT_RUN,
    Asked,
    Space,
    ask_trial,
    beating,
    best_trial,
    default_storage,
    half_score,
    held_back,
    history_png,
    importance_png,
    load_space,
    open_study,
    pin_study,
    reopen_trial,
    searched_overrides,
    settle,
    trial_value,
    trials_table,
    trials_to_run,
    validate_space,
)
from skin.track.tracking import PARENT_TAG, MLflowRegistry, MLflowTracker, resolve_tracking_uri
from skin.train.loop import TrainingStopped
from tasks.training import (
    decode_images_task,
    evaluate_task,
    register_task,
    train_key,
    train_task,
)

GPU_LIMIT = "gpu"  # Prefect global concurrency limit: trainings at once (`prefect gcl create`)
SLOT_LEASE_S = 120  # a dead process's slot comes back after this long

# A trial's value from its evaluation; cross-validation (`--cv`) plugs another one in.
Scorer = Callable[[PipelineConfig, ManifestRef, EvalOutcome], float]


@dataclass(frozen=True)
class SweepContext:
    """What every trial needs, as plain values (trials may run on other machines)."""

    name: str
    storage: str
    space_path: str
    config_path: str | None
    overrides: dict[str, Any]
    data_uri: str | None
    manifest: ManifestRef
    parent_run_id: str
    cv_folds: int | None = None


def dev_score(
    cfg: PipelineConfig, _manifest: ManifestRef, evaluated: EvalOutcome, *, metric: str
) -> float:
    """The trial's value: its evaluation's `metric` on the SELECT half of dev (the best
    checkpoint's predictions); the other half is held back for the gate (`register_best_trial`)."""
    dev = pd.read_parquet(Path(evaluated.report_dir) / "predictions_dev.parquet")
    return half_score(dev, cfg.data.known_classes, metric)


def cv_select_score(
    cfg: PipelineConfig, manifest: ManifestRef, evaluated: EvalOutcome, *, folds: int, metric: str
) -> float:
    """`--cv K`: `metric` on the pooled out-of-fold predictions over train (the folds never
    touch dev, so the half the gate reads stays unread by any ranking); the fold runs nest under
    the trial's own run."""
    from flows.cv import cross_validate

    outcome = cross_validate(
        cfg, manifest, folds, parent_run_id=evaluated.run_id, one_at_a_time=True
    )
    oof = pd.read_parquet(outcome.oof_uri)
    if (oof["manifest_split"] == "dev").any():
        raise RuntimeError("out-of-fold rows include dev: the gate's held-back half was ranked on")
    return trial_value(oof, cfg.data.known_classes, metric)


def make_scorer(metric: str, cv_folds: int | None) -> Scorer:
    """Dev-split scoring (on dev's SELECT half), or cross-validated scoring with `cv_folds`
    folds (flows.cv; out of fold over train, dev untouched)."""
    if cv_folds is None:
        return partial(dev_score, metric=metric)
    from flows.cv import oof_metric

    oof_metric(metric)  # a metric with no out-of-fold counterpart fails before any training
    return partial(cv_select_score, folds=cv_folds, metric=metric)


def ensure_gpu_limit(slots: int = 1) -> None:
    """Create the `gpu` concurrency limit (1 slot) unless it exists; raise it with
    `prefect gcl update gpu --limit N` (or create it first with `prefect gcl create gpu --limit N`)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(GPU_LIMIT)
        except ObjectNotFound:
            with suppress(ObjectAlreadyExists):  # another sweep made it meanwhile
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=GPU_LIMIT, limit=slots)
                )


def pruning_hook(trial: Any, metric: str) -> Callable[[int, dict[str, float]], bool]:
    """`should_stop` for training: report the epoch's dev metric, stop when the pruner says so."""

    def should_stop(epoch: int, metrics: dict[str, float]) -> bool:
        trial.report(float(metrics[metric]), epoch)
        return trial.should_prune()

    return should_stop


def _mark(cfg: PipelineConfig, run_id: str, state: str) -> None:
    """The trial's outcome on its MLflow run: `skin.trial_state` complete, pruned or failed."""
    from mlflow import MlflowClient

    MlflowClient(resolve_tracking_uri(cfg.tracking.tracking_uri)).set_tag(
        run_id, "skin.trial_state", state
    )


@task(name="sweep-trial", cache_policy=NO_CACHE)  # every call is a new trial
def trial_task(ctx: SweepContext, asked: Asked) -> dict[str, Any]:
    """One trial: wait for a `gpu` slot, train (pruned early if it lags), evaluate, score and
    tell Optuna; the trial beats while it waits and runs."""
    from prefect.concurrency.sync import concurrency

    space = load_space(ctx.space_path)
    study = open_study(ctx.name, ctx.storage, space)
    trial = reopen_trial(study, asked)
    slot = concurrency(GPU_LIMIT, occupy=1, lease_duration=SLOT_LEASE_S)
    with beating(study, asked.trial_id, space.heartbeat), slot:
        return _run_trial(ctx, space, study, trial, asked.overrides)


def retire_pruned(cfg: PipelineConfig, manifest: ManifestRef, run_id: str) -> None:
    """Forget a pruned training's run pointer: a later identical trial then trains in its own
    run, and the pruned trial's run keeps its record (KILLED, `skin.trial_state=pruned`)
    instead of being resumed, re-tagged and marked complete by another trial."""
    pointer = run_pointer(cfg.work_dir, train_key(cfg, manifest))
    with FileLock(str(pointer) + ".lock"):
        if pointer.is_file() and json.loads(pointer.read_text()).get("run_id") == run_id:
            pointer.unlink()


def _trial_manifest(
    ctx: SweepContext, cfg: PipelineConfig, overrides: dict[str, Any], stages: dict[str, str]
) -> ManifestRef:
    """The sweep's manifest, or, for a trial that changes how train is balanced (`split.balance`,
    `split.majority_class`: what a space may change of `split.*`), its own: the sweep's split,
    then balanced as the trial says (each cached per setting); dev and test are the sweep's."""
    if not any(k.startswith(("split.", "data.")) for k in overrides):
        return ctx.manifest
    _, manifest = data_stages(cfg, stages, refresh=False, previous=ctx.manifest.uri)
    return manifest


def _run_trial(
    ctx: SweepContext, space: Space, study: Any, trial: Any, overrides: dict[str, Any]
) -> dict[str, Any]:
    import optuna

    stages: dict[str, str] = {}
    out = {"number": trial.number, "params": overrides, "stages": stages}
    try:
        cfg = resolve_config(ctx.config_path, {**ctx.overrides, **overrides}, ctx.data_uri)
        tags = {
            PARENT_TAG: ctx.parent_run_id,
            "skin.sweep": ctx.name,
            "skin.trial": str(trial.number),
            **{f"skin.param.{k}": str(v) for k, v in overrides.items()},
        }
        manifest = _trial_manifest(ctx, cfg, overrides, stages)
        call(decode_images_task, stages, manifest=manifest, config=cfg)  # cached per size
        try:
            trained = call(
                train_task,
                stages,
                manifest=manifest,
                config=cfg,
                tags=tags,
                should_stop=pruning_hook(trial, space.metric)
                if space.pruner.kind != "none"
                else None,
            )
        except TrainingStopped as stop:
            retire_pruned(cfg, manifest, stop.run_id)
            trial.set_user_attr("run_id", stop.run_id)
            _mark(cfg, stop.run_id, "pruned")
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return out | {"state": "PRUNED", "run_id": stop.run_id, "epoch": stop.epoch}
        trial.set_user_attr("run_id", trained.run_id)
        trial.set_user_attr("manifest_uri", manifest.uri)  # its own, when it changed split.*
        evaluated = call(
            evaluate_task,
            stages,
            manifest=manifest,
            run_id=trained.run_id,
            checkpoint=trained.best_checkpoint,
            config=cfg,
        )
        value = make_scorer(space.metric, ctx.cv_folds)(cfg, manifest, evaluated)
        trial.set_user_attr("model_uri", evaluated.model_uri)
        trial.set_user_attr("cached", stages.get(train_task.name) == "cached")
        _mark(cfg, trained.run_id, "complete")
    except Exception as err:
        trial.set_user_attr("error", f"{type(err).__name__}: {err}"[:1000])
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise
    study.tell(trial, value)
    return out | {"state": "COMPLETE", "run_id": trained.run_id, "value": value}


def run_trials(ctx: SweepContext, study: Any, space: Space, count: int, jobs: int) -> list[Any]:
    """Ask and submit `count` trials, at most `jobs` in flight (each still waits for a `gpu`
    slot); a trial is asked only when it can start, so it learns from every one finished."""
    pending: list[PrefectFuture[dict[str, Any]]] = []
    done: list[PrefectFuture[dict[str, Any]]] = []
    for _ in range(count):
        if len(pending) >= max(1, jobs):
            first = next(as_completed(pending))
            pending.remove(first)
            done.append(first)
        pending.append(trial_task.submit(ctx, ask_trial(study, space)))
    done += pending
    return [f.result(raise_on_failure=False) for f in done]


def open_parent_run(cfg: PipelineConfig, study: Any, name: str) -> MLflowTracker:
    """The sweep's MLflow run: the one the study remembers (a resumed sweep), else a new one."""
    tracking, experiment = cfg.tracking.tracking_uri, cfg.tracking.experiment
    known = study.user_attrs.get(PARENT_RUN)
    if known:
        try:
            return MLflowTracker(tracking, experiment, run_id=known)
        except Exception as err:  # deleted, or another tracking server: start a new one
            get_run_logger().warning("sweep run %s not reopened (%s): a new one", known, err)
    tags = {"skin.sweep": name, "skin.kind": "sweep", "skin.study": name}
    tracker = MLflowTracker(tracking, experiment, run_name=f"sweep-{name}", tags=tags)
    study.set_user_attr(PARENT_RUN, tracker.run_id)
    return tracker


def log_summary(
    parent: MLflowTracker, study: Any, space: Space, folder: Path
) -> dict[str, Any] | None:
    """The parent run's record: the best trial (params, value, run), the trials table, the
    optimisation history and parameter importances."""
    folder.mkdir(parents=True, exist_ok=True)
    table = trials_table(study)
    table.to_csv(folder / "trials.csv", index=False)
    history_png(study, folder / "optimization_history.png")
    importances = importance_png(study, folder / "param_importances.png")
    best = best_trial(study)
    states = table["state"].value_counts().to_dict() if len(table) else {}
    parent.log_metrics({f"trials_{s.lower()}": float(n) for s, n in states.items()})
    parent.log_metrics({f"importance/{k}": v for k, v in importances.items()})
    parent.log_artifact(folder, "sweep")
    if best is None:
        return None
    parent.log_metrics({f"best_{space.metric}": float(best.value)}, step=best.number)
    run_id = best.user_attrs.get("run_id", "")
    best_params = {f"skin.best.{k}": str(v) for k, v in best.params.items()}  # tags: a resumed
    # sweep's new best replaces them (MLflow params, once logged, never change)
    parent.set_tags(
        {"skin.best_trial": str(best.number), "skin.best_run_id": run_id, **best_params}
    )
    return {
        "number": best.number,
        "value": best.value,
        "params": best.params,
        "run_id": run_id,
        "model_uri": best.user_attrs.get("model_uri"),
        "manifest_uri": best.user_attrs.get("manifest_uri"),
        "overrides": best.user_attrs.get("overrides", best.params),
    }


def checked_space(
    space_path: str,
    cfg: PipelineConfig,
    cv_folds: int | None,
    overrides: dict[str, Any] | None = None,
) -> Space:
    """The space file, every range and choice a valid config, its metric scorable (with --cv:
    out of fold), before any work starts; overrides it replaces are named in the log."""
    space = load_space(space_path)
    if replaced := searched_overrides(space, overrides or {}):
        get_run_logger().warning(
            "%s searches %s: each trial's value replaces the override (the space decides what"
            " trials compare; overrides set everything else). For a small sweep use a space"
            " without them, e.g. configs/sweep-cpu.yaml",
            space_path,
            ", ".join(replaced),
        )
    validate_space(space, cfg)
    make_scorer(space.metric, cv_folds)
    return space


def failures(name: str, results: list[Any], best: dict[str, Any] | None) -> list[BaseException]:
    """The trials that raised; when none completed at all, the sweep fails with the first."""
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors and best is None:
        raise RuntimeError(f"sweep {name}: no trial completed; the first error: {errors[0]}") from (
            errors[0]
        )
    return errors


def study_facts(
    cfg: PipelineConfig, manifest: ManifestRef, space: Space, cv_folds: int | None
) -> dict[str, str]:
    """What a study searches; resumed on anything else it is refused (`pin_study`)."""
    return {
        "data_uri": cfg.data.uri,
        "manifest_hash": manifest.hash,
        "space": digest(*(repr(p) for p in space.params)),
        "metric": space.metric,
        "cv_folds": str(cv_folds),
        # trials valued alike: a study ranked another way is not resumed
        "ranked_on": "out of fold over train (flows.cv)"
        if cv_folds
        else "dev's select half (skin.search.sweep.dev_halves)",
    }


def held_back_predictions(config: PipelineConfig, run_id: str) -> tuple[Path, dict[str, str]]:
    """The best trial's dev predictions on the half no ranking read, written beside its
    `predictions_dev.parquet`; and the tags that say what the gate was given."""
    report = RunPaths(config.work_dir, run_id).report
    path = report / "predictions_dev_held_back.parquet"
    if not (report / "predictions_dev.parquet").is_file():  # the gate then says it has none
        return path, {"gate.images": f"none: run {run_id} has no predictions_dev.parquet"}
    dev = pd.read_parquet(report / "predictions_dev.parquet")
    held = held_back(dev)
    held.to_parquet(path, index=False)
    lesions = held["lesion_id"].nunique() if "lesion_id" in held else len(held)
    return path, {
        "gate.images": f"held back: {len(held)} of {len(dev)} dev images ({lesions} lesions),"
        " the half of dev no trial was ranked on (skin.search.sweep.dev_halves)",
    }


def register_best_trial(
    best: dict[str, Any],
    config: PipelineConfig,
    manifest: ManifestRef,
    stages: dict[str, str],
    parent: MLflowTracker,
) -> Registration:
    """The best trial through the promotion gate, with its own config and manifest (a trial
    that changed how train is balanced has one), judged on the held-back half of dev: the
    images that picked it would flatter it."""
    own = manifest_ref(best["manifest_uri"]) if best["manifest_uri"] else manifest
    held, tags = held_back_predictions(config, best["run_id"])
    registration = call(
        register_task,
        stages,
        run_id=best["run_id"],
        model_uri=best["model_uri"],
        config=config,
        manifest=own,
        dev_predictions=str(held),
    )
    r = registration
    uri = resolve_tracking_uri(config.tracking.tracking_uri)
    MLflowRegistry(uri).set_version_tags(r.name, r.version, tags)
    parent.set_tags({"skin.registered": f"{r.name} v{r.version} {r.alias}", **tags})
    return registration


@flow(name="skin-sweep", log_prints=True)
def sweep_flow(
    space_path: str = "configs/sweep.yaml",
    trials: int = 20,
    name: str | None = None,
    data_uri: str | None = None,
    config_path: str | None = None,
    overrides: dict[str, Any] | None = None,
    storage: str | None = None,
    jobs: int = 1,
    cv_folds: int | None = None,
    register_best: bool = True,
) -> SweepResult:
    """Search the space file's ranges until the study named `name` holds `trials` trials
    (started again with the same name, a sweep resumes). The best trial goes through the
    promotion gate at the end."""
    log = get_run_logger()
    t0 = time.perf_counter()
    cfg = flow_config(config_path, overrides, data_uri, training=True)
    space = checked_space(space_path, cfg, cv_folds, overrides)
    name = name or Path(space_path).stem
    storage = storage or default_storage(cfg.work_dir)
    study = open_study(name, storage, space)
    study.set_user_attr("metric", space.metric)
    ensure_gpu_limit()

    stages: dict[str, str] = {}
    listing, manifest = data_stages(cfg, stages, refresh=False)
    call(decode_images_task, stages, manifest=manifest, config=cfg)
    data_seconds = time.perf_counter() - t0

    pin_study(study, study_facts(cfg, manifest, space, cv_folds))
    parent = open_parent_run(cfg, study, name)
    ctx = SweepContext(
        name,
        storage,
        str(space_path),
        config_path,
        dict(overrides or {}),
        data_uri,
        manifest,
        parent.run_id,
        cv_folds,
    )
    settle(study, space.heartbeat)  # a trial whose process just died is not counted as running
    count = trials_to_run(study, trials)
    log.info("sweep %s: %d trial(s) to run (of %d) in %s", name, count, trials, storage)
    try:
        results = run_trials(ctx, study, space, count, jobs)
        best = log_summary(parent, study, space, Path(cfg.work_dir) / "sweeps" / name)
        registration = None
        if register_best and best and best["model_uri"]:
            best_cfg = resolve_config(
                config_path, {**(overrides or {}), **best["overrides"]}, data_uri
            )
            registration = register_best_trial(best, best_cfg, manifest, stages, parent)
    except BaseException:
        parent.close("FAILED")
        raise
    finally:  # trials with their own split moved the dataset's latest manifest: put it back
        set_latest(manifest, DatasetState.of(cfg))
    parent.close("FINISHED")
    errors = failures(name, results, best)
    table = trials_table(study)
    return SweepResult(
        name=name,
        storage=storage,
        parent_run_id=parent.run_id,
        manifest_hash=manifest.hash,
        images=listing.images,
        ran=[r for r in results if not isinstance(r, BaseException)],
        errors=[f"{type(e).__name__}: {e}" for e in errors],
        trials=table.astype(object).where(table.notna(), None).to_dict(orient="records"),
        best=best,
        registration=registration,
        stages=stages,
        data_seconds=data_seconds,
        seconds=time.perf_counter() - t0,
    )


def sweep_flow_on_dask(address: str | None = None, workers: int = 2) -> Any:
    """skin-sweep with its trials spread over a Dask cluster (each worker's trials still take
    `gpu` slots; the study must then live in a shared database: --storage postgresql://...)."""
    from flows.prepare import dask_runner

    return sweep_flow.with_options(task_runner=dask_runner(address, workers))
