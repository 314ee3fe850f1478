"""The train stage: a manifest in, checkpoints and per-epoch metrics out.

It reads its inputs by reference (a manifest URI) and records through a Tracker, so it runs the same
from the CLI, inside a Prefect task, or alone on a GPU machine (`skin.train.launch` starts it under torchrun).
The batches come from `skin.train.feeds`; the files go where `skin.base.runs.RunPaths` says.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from skin.base.config import PipelineConfig, TrainConfig, config_to_yaml, flatten
from skin.base.progress import Factory as Progress
from skin.base.progress import silent
from skin.base.runs import RunPaths
from skin.data import manifest as mf
from skin.track.tracking import NullTracker, Tracker, git_commit
from skin.train import checkpoint as ckpt
from skin.train import distributed
from skin.train.distributed import World
from skin.train.feeds import (
    Feeds,
    SplitImages,
    backbone_features,
    feature_feeds,
    image_feeds,
    index_splits,
    place_model,
)
from skin.train.loop import FitParams, FitResult, TrainingStopped, fit, pick_device, seed_everything
from skin.train.model import (
    apply_freeze,
    build_model,
    input_spec,
    is_head_only,
)
from skin.train.outcome import TrainOutcome  # cached results pickled before name it here

log = logging.getLogger(__name__)


def fit_params(cfg: PipelineConfig, train_labels: np.ndarray, n_classes: int) -> FitParams:
    """The train section as `fit`'s explicit values; class weights from the train labels."""
    t = cfg.train
    weights = None
    if t.class_weighted_loss:
        counts = np.bincount(train_labels, minlength=n_classes).astype(float)
        weights = tuple(float(len(train_labels) / (n_classes * max(c, 1))) for c in counts)
    same = {f.name for f in fields(FitParams)} & set(type(t).model_fields)  # named alike
    return FitParams(**{name: getattr(t, name) for name in same}, class_weights=weights)


def make_model(cfg: PipelineConfig) -> torch.nn.Module:
    """The configured model, seeded (same initial head every time) and frozen as asked."""
    m = cfg.model
    seed_everything(cfg.train.seed)
    model = build_model(
        m.name,
        len(cfg.data.known_classes),  # without a held-out class
        pretrained=m.pretrained,
        weights=m.weights,
        drop_rate=m.drop_rate,
    )
    apply_freeze(model, m.freeze)
    return model


# --------------------------------------------------------------------------- train


def train_stage(
    manifest_uri: str,
    cfg: PipelineConfig,
    tracker: Tracker,
    *,
    progress: Progress = silent,
    should_stop: Callable[[int, dict[str, float]], bool] | None = None,
) -> TrainOutcome:
    """Train from a manifest; resumes when the run folder already holds checkpoints.

    `should_stop(epoch, metrics)` is asked after each recorded epoch (a sweep's pruner): True
    raises `TrainingStopped`, the epoch's checkpoint kept.

    Under torchrun every process calls this with the same arguments: each joins the process
    group and trains on its share of every global batch (train.batch_size / world size); rank 0
    alone writes the run folder and records through `tracker` (the others get a NullTracker).
    """
    device, world = join_processes(cfg.train)
    if not world.is_main:
        tracker, progress = NullTracker(tracker.run_id), silent
    manifest = mf.read(manifest_uri)
    paths = RunPaths(cfg.work_dir, tracker.run_id)
    paths.root.mkdir(parents=True, exist_ok=True)
    if world.is_main:
        paths.config.write_text(config_to_yaml(cfg))
    model = make_model(cfg)
    spec = input_spec(model, cfg.train.image_size)
    place = place_model(model, device, cfg.train)
    use_features = cfg.train.feature_cache and is_head_only(model) and not cfg.train.augment.enabled
    # Rank 0 decodes the images and extracts features; the other ranks then read its caches.
    with distributed.main_first():
        data = index_splits(manifest, cfg, spec, progress)
        feats = backbone_features(model, data, place, progress) if use_features else None
    if world.is_main:
        _record_inputs(tracker, cfg, manifest, manifest_uri, paths, data)
    feeds = (
        feature_feeds(model, feats, data, cfg.train, cfg.model.drop_rate, device, world)
        if feats is not None
        else image_feeds(model, data, cfg.train, cfg.shared.shuffle_window, place, world)
    )
    bar = progress("epochs", cfg.train.epochs)
    on_epoch = _epoch_recorder(tracker, paths, bar, should_stop)
    result = _fit(feeds, model, cfg, data, manifest, device, paths.checkpoints, on_epoch)
    tracker.log_metrics({"best_epoch": float(result.best_epoch)})
    outcome = _train_outcome(result, paths, use_features, int((~data.cache.ok).sum()))
    if world.is_main:
        paths.outcome.write_text(json.dumps(outcome.to_dict(), indent=2))
    return outcome


def join_processes(train: TrainConfig) -> tuple[torch.device, World]:
    """This process's device, in the torchrun process group when there is one."""
    device = pick_device(train.device)
    world = distributed.init_from_env(device.type)
    if world.distributed and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
    if train.batch_size % world.size:
        raise ValueError(
            f"train.batch_size {train.batch_size} is not a multiple of the {world.size}"
            " training processes; pick a batch size divisible by the process count"
        )
    return device, world


def _fit(
    feeds: Feeds,
    model: torch.nn.Module,
    cfg: PipelineConfig,
    data: SplitImages,
    manifest: pd.DataFrame,
    device: torch.device,
    checkpoints: Path,
    on_epoch: Callable[[int, dict[str, float]], None],
) -> FitResult:
    """`fit` on the feeds; every checkpoint carries the config, classes and manifest version."""
    return fit(
        feeds.net,
        train_batches=feeds.train_batches,
        dev_batches=feeds.dev_batches,
        prep=feeds.prep,
        train_prep=feeds.train_prep,
        set_train_mode=feeds.set_mode,
        state_module=model,
        params=fit_params(cfg, data.labels["train"], len(data.classes)),
        steps_per_epoch=feeds.steps,
        device=device,
        checkpoint_dir=checkpoints,
        on_epoch=on_epoch,
        extra_state={
            "config": json.loads(cfg.model_dump_json()),
            "classes": list(data.classes),
            "manifest_hash": mf.manifest_hash(manifest),
        },
    )


def _epoch_recorder(
    tracker: Tracker,
    paths: RunPaths,
    bar: Callable[[int], None],
    should_stop: Callable[[int, dict[str, float]], bool] | None = None,
) -> Callable[[int, dict[str, float]], None]:
    """After each epoch: its metrics (at step = epoch) and its checkpoint, then the progress bar;
    then `should_stop` may end the training."""

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        tracker.log_metrics({f"epoch/{k}": v for k, v in metrics.items()}, step=epoch)
        tracker.log_artifact(ckpt.epoch_path(paths.checkpoints, epoch), "checkpoints")
        bar(1)
        if should_stop is not None and should_stop(epoch, metrics):
            raise TrainingStopped(epoch, tracker.run_id)

    return on_epoch


def _train_outcome(
    result: FitResult, paths: RunPaths, feature_path: bool, bad_images: int
) -> TrainOutcome:
    """The fit's result with where its files are."""
    return TrainOutcome(
        run_id=paths.run_id,
        run_dir=str(paths.root),
        best_checkpoint=str(paths.best_checkpoint),
        best_epoch=result.best_epoch,
        last_epoch=result.last_epoch,
        resumed_from=result.resumed_from,
        stopped_early=result.stopped_early,
        feature_path=feature_path,
        bad_images=bad_images,
        history=result.history,
    )


def _record_inputs(
    tracker: Tracker,
    cfg: PipelineConfig,
    manifest: pd.DataFrame,
    manifest_uri: str,
    paths: RunPaths,
    data: SplitImages,
) -> None:
    """Params, tags, the resolved config, the manifest (also as dataset inputs, one per split)
    and the bad-image report."""
    tracker.log_params(flatten(cfg))
    tags = {
        "manifest_hash": mf.manifest_hash(manifest),
        "manifest_uri": manifest_uri,
        "dataset": str(manifest["source"].iloc[0]),
    }
    for split in mf.SPLITS:  # MLflow keeps one input per (name, digest): the name says the split
        rows = manifest[manifest["split"] == split]
        tracker.log_dataset(rows, f"{tags['dataset']} [{split}]", tags["manifest_hash"], split)
    commit = git_commit()
    if commit:
        tags["code_version"] = commit
    tracker.set_tags(tags)
    tracker.log_artifact(paths.config, "config")
    manifest.to_parquet(paths.manifest, index=False)
    tracker.log_artifact(paths.manifest, "manifest")
    bad = data.cache.errors
    if len(bad):
        bad.to_csv(paths.bad_images, index=False)
        tracker.log_artifact(paths.bad_images, "data")
    mf.summary(manifest).to_csv(paths.split_counts)
    tracker.log_artifact(paths.split_counts, "data")
