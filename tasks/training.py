"""Prefect tasks for the model stages (decode, train, evaluate, register); the logic lives in skin."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from filelock import FileLock
from prefect import runtime, task

from skin.base.config import PipelineConfig, config_digest, digest
from skin.base.progress import terminal_bars
from skin.base.runs import RunPaths, cache_root, run_pointer
from skin.data import manifest as mf
from skin.data.location import DatasetState
from skin.data.shards import image_cache
from skin.data.stages import ManifestRef, read_skipped, skipped_uri
from skin.evaluate.compare import dev_comparison
from skin.evaluate.modelcard import model_card
from skin.evaluate.outcome import EvalOutcome
from skin.release.registry import GatePolicy, Registration, register_and_gate
from skin.track.tracking import MLflowRegistry, MLflowTracker, resolve_tracking_uri, tracked_run
from skin.train.outcome import TrainOutcome
from tasks.caching import IO_RETRIES, Names, keyed_on, say
from tasks.events import emit_promotion

MODEL_SECTIONS = ("data", "model", "train", "tracking", "work_dir", "shared")


def _tags(extra: dict[str, str] | None = None) -> dict[str, str]:
    tags = dict(extra or {})
    if runtime.flow_run.id:
        tags["prefect.flow_run_id"] = str(runtime.flow_run.id)
        tags["prefect.flow_name"] = str(runtime.flow_run.flow_name)
    return tags


@task(
    name="prepare-images",
    cache_policy=keyed_on(
        "manifest.hash",
        config_sections=("model.name", "train.image_size", "work_dir", "shared"),
        names=Names(files=("path",)),
    ),
    **IO_RETRIES,
)
def decode_images_task(manifest: ManifestRef, config: PipelineConfig) -> dict[str, Any]:
    """Fetch and decode every image once (parallel); the cache folder and the images that failed."""
    from skin.train.model import build_model, input_spec  # torch, timm: only when the stage runs

    skeleton = build_model(config.model.name, len(config.data.classes), pretrained=False)
    spec = input_spec(skeleton, config.train.image_size)
    root = cache_root(config.work_dir)
    cache = image_cache(mf.read(manifest.uri), spec.cache_size, root, config.shared)
    return {"path": str(cache.path), "bad": cache.errors.to_dict(orient="records")}


def train_key(config: PipelineConfig, manifest: ManifestRef) -> str:
    """Identity of a training: the manifest plus every setting training depends on."""
    return digest(manifest.hash, config_digest(config, MODEL_SECTIONS))


@task(
    name="train",
    cache_policy=keyed_on(
        "manifest.hash",
        config_sections=MODEL_SECTIONS,
        names=Names(files=("best_checkpoint",), runs=("run_id",)),
    ),
)
def train_task(
    manifest: ManifestRef,
    config: PipelineConfig,
    run_id: str | None = None,
    tags: dict[str, str] | None = None,
    should_stop: Callable[[int, dict[str, float]], bool] | None = None,
) -> TrainOutcome:
    """Train in an MLflow run. A crashed attempt with the same key (or `run_id`) is resumed from
    its last complete checkpoint, in the same MLflow run. train.nproc > 1 trains with that many
    local DistributedDataParallel processes (torchrun).

    `tags` go on the run (a sweep's parent run and trial); `should_stop` may end the training
    after an epoch (a pruner; single-process training only, nproc > 1 trains to the end): the
    task then fails with `TrainingStopped`, so nothing is cached (neither is in the key: they do
    not change what a finished training is)."""
    # torch, timm, torchvision: imported when a training runs, not when its cached result is read
    from skin.train.launch import launch
    from skin.train.stage import train_stage

    cfg = config
    key = train_key(cfg, manifest)
    manifest_uri, manifest_hash = manifest.uri, manifest.hash
    pointer = run_pointer(cfg.work_dir, key)
    pointer.parent.mkdir(parents=True, exist_ok=True)
    # One training per key at a time: a second pipeline on the same data waits, then resumes the
    # (by then complete) run instead of training into the same folder concurrently.
    with FileLock(str(pointer) + ".lock"):
        if run_id is None and pointer.exists():
            run_id = resumable(json.loads(pointer.read_text())["run_id"], cfg)
        tracker = MLflowTracker(
            cfg.tracking.tracking_uri,
            cfg.tracking.experiment,
            run_id=run_id,
            run_name=f"{cfg.model.name}-{manifest_hash[:8]}-{key[:6]}",
            tags=_tags({"skin.train_key": key, **(tags or {})}),
        )
        tmp = pointer.with_suffix(".tmp")
        tmp.write_text(json.dumps({"run_id": tracker.run_id}))
        tmp.replace(pointer)
        with tracked_run(tracker):
            tracker.set_tags(_tags(tags))
            _log_skipped(tracker, cfg, manifest)
            if cfg.train.nproc > 1:  # torchrun workers; rank 0 logs into this same MLflow run
                outcome = launch(manifest_uri, cfg, tracker.run_id, cfg.train.nproc, tracking=True)
            else:
                with terminal_bars() as progress:
                    outcome = train_stage(
                        manifest_uri, cfg, tracker, progress=progress, should_stop=should_stop
                    )
    return outcome


def resumable(run_id: str, cfg: PipelineConfig) -> str | None:
    """The run a crashed attempt left to resume, or None when the tracking store no longer
    has it (a deleted or replaced mlflow.db): then a fresh run starts, and one line says why."""
    why = MLflowRegistry(cfg.tracking.tracking_uri).run_gone(run_id)
    if why:
        say(f"not resuming the run this training left: {why}")
    return None if why else run_id


def _log_skipped(tracker: MLflowTracker, cfg: PipelineConfig, manifest: ManifestRef) -> None:
    """`data/skipped_objects.csv` in the run: every object that did not make it in, and why."""
    if manifest.listing_fingerprint is None:  # a hand-made manifest: no listing behind it
        return
    uri = skipped_uri(DatasetState.of(cfg), manifest.listing_fingerprint)
    path = RunPaths(cfg.work_dir, tracker.run_id).skipped_objects
    path.parent.mkdir(parents=True, exist_ok=True)
    read_skipped(uri).to_csv(path, index=False)
    tracker.log_artifact(path, "data")


# Everything evaluation reads besides the checkpoint (whose content is keyed, not its path): the
# model comes from the checkpoint, the input size and batch from train, the images from the cache.
EVAL_SECTIONS = (
    "evaluate",
    "predict",  # the abstention threshold's coverage and score
    "explain",  # the error gallery: method, layer and size
    "data",
    "tracking",
    "train.image_size",
    "train.batch_size",
    "train.device",
    "work_dir",
    "shared",
)


@task(
    name="evaluate",
    cache_policy=keyed_on(
        "manifest.hash",
        "run_id",
        files=("checkpoint",),
        config_sections=EVAL_SECTIONS,
        names=Names(files=("report_dir",), runs=("run_id",)),
    ),
)
def evaluate_task(
    manifest: ManifestRef, run_id: str, checkpoint: str, config: PipelineConfig
) -> EvalOutcome:
    """Score a checkpoint on every split and log into the training's MLflow run."""
    # torch, timm, torchvision: only when an evaluation runs, not when its cached result is read
    from skin.evaluate.stage import evaluate_stage

    cfg, manifest_uri = config, manifest.uri
    tracker = MLflowTracker(cfg.tracking.tracking_uri, cfg.tracking.experiment, run_id=run_id)
    with tracked_run(tracker):
        tracker.set_tags(_tags())
        with terminal_bars() as progress:
            outcome = evaluate_stage(manifest_uri, checkpoint, cfg, tracker, progress=progress)
        outcome.url = tracker.url() or outcome.url
    return outcome


@task(
    name="register-model",
    cache_policy=keyed_on(
        "run_id",
        "model_uri",
        "manifest.hash",
        "dev_predictions",
        files=("dev_predictions",),
        config_sections=("tracking", "registry", "evaluate", "data.classes", "split.seed"),
        names=Names(version=True),
    ),
    **IO_RETRIES,
)
def register_task(
    run_id: str,
    model_uri: str,
    config: PipelineConfig,
    manifest: ManifestRef | None = None,
    dev_predictions: str | None = None,
) -> Registration:
    """New registry version; `champion` moves only to a challenger that beats it (paired: both
    scored on the challenger's dev images, or on `dev_predictions`' rows when given, as a
    sweep gives the half of dev its ranking never read; point: the scores each recorded)."""
    uri = resolve_tracking_uri(config.tracking.tracking_uri)
    run = RunPaths(config.work_dir, run_id)
    compare = dev_comparison(
        Path(dev_predictions) if dev_predictions else run.report / "predictions_dev.parquet",
        config.data.classes,
        dataset=manifest.hash if manifest else "",
        tta=config.evaluate.tta,
        tracking_uri=uri,
        n_resamples=config.evaluate.bootstrap,
        seed=config.split.seed,
        min_slice_size=config.evaluate.min_slice_size,
        slice_alpha=config.registry.slice_alpha,
        manifest_uri=manifest.uri if manifest else None,
        min_images=config.registry.min_paired_images,
    )
    r, name = config.registry, config.tracking.registered_model
    policy = GatePolicy(r.gate, r.min_improvement, r.max_slice_drop, compare)
    card = partial(model_card, run, name=name)
    reg = register_and_gate(uri, name, model_uri, run_id, policy=policy, card=card)
    emit_promotion(reg, run_id, uri)
    return reg
