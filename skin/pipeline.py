"""The train and evaluate stages: a manifest in, checkpoints, metrics and reports out.

Each stage reads its inputs by reference (a manifest URI, a checkpoint path) and records through a
Tracker, so it runs the same from the CLI, inside a Prefect task, or alone on a GPU machine.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from skin import checkpoint as ckpt
from skin import distributed
from skin import manifest as mf
from skin.augment import BatchAugment
from skin.config import PipelineConfig, config_to_yaml, flatten
from skin.data import (
    DIHEDRAL,
    EvalImages,
    Normalize,
    TrainImages,
    default_workers,
    dihedral_view,
    make_loader,
    set_epoch,
)
from skin.evaluate import SplitMetrics, bias_variance, diagnosis, flat_metrics, split_metrics
from skin.features import FeatureSet, HeadOnFeatures, extract
from skin.imagecache import ImageCache
from skin.model import InputSpec, apply_freeze, build_model, input_spec, is_head_only, train_mode
from skin.progress import Factory as Progress
from skin.progress import silent
from skin.shards import ShardedImages, image_cache
from skin.tracking import NullTracker, Tracker, git_commit
from skin.train import FitParams, amp_dtype, evaluate_batches, fit, pick_device, seed_everything

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """A manifest made ready for a model: decoded cache, and per split the cache rows (in
    manifest order) and their labels."""

    manifest: pd.DataFrame
    cache: ImageCache
    spec: InputSpec
    classes: tuple[str, ...]
    rows: dict[str, np.ndarray] = field(default_factory=dict)
    labels: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class TrainOutcome:
    run_id: str
    run_dir: str
    best_checkpoint: str
    best_epoch: int
    last_epoch: int
    resumed_from: int | None
    stopped_early: bool
    feature_path: bool
    bad_images: int
    history: list[dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EvalOutcome:
    run_id: str
    metrics: dict[str, float]
    diagnosis: str
    report_dir: str
    url: str | None = None
    model_uri: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prepare(
    manifest: pd.DataFrame, cfg: PipelineConfig, spec: InputSpec, progress: Progress = silent
) -> Prepared:
    """Build (or reuse) the decoded-image cache and find each split's rows in it, by key."""
    classes = cfg.data.classes
    root = Path(cfg.work_dir) / "cache"
    cache = image_cache(manifest, spec.cache_size, root, cfg.shared, progress)
    at = cache.rows_for(manifest["key"])  # manifest row i is cache row at[i]
    index = {c: i for i, c in enumerate(classes)}
    p = Prepared(manifest, cache, spec, classes)
    for split in mf.SPLITS:
        mask = (manifest["split"] == split).to_numpy() & cache.ok[at]
        if split == "train":
            mask &= manifest["keep"].to_numpy().astype(bool)
        rows = np.flatnonzero(mask)
        p.rows[split] = at[rows]
        p.labels[split] = manifest["label"].iloc[rows].map(index).to_numpy().astype(np.int64)
    if len(p.rows["train"]) == 0 or len(p.rows["dev"]) == 0:
        raise ValueError("no usable train or dev images after decoding; see the bad-image report")
    return p


def fit_params(cfg: PipelineConfig, train_labels: np.ndarray, n_classes: int) -> FitParams:
    t = cfg.train
    weights = None
    if t.class_weighted_loss:
        counts = np.bincount(train_labels, minlength=n_classes).astype(float)
        weights = tuple(float(len(train_labels) / (n_classes * max(c, 1))) for c in counts)
    return FitParams(
        epochs=t.epochs,
        lr=t.lr,
        optimizer=t.optimizer,
        weight_decay=t.weight_decay,
        scheduler=t.scheduler,
        warmup_epochs=t.warmup_epochs,
        label_smoothing=t.label_smoothing,
        class_weights=weights,
        early_stopping_patience=t.early_stopping_patience,
        keep_checkpoints=t.keep_checkpoints,
        amp=t.amp,
        seed=t.seed,
    )


def make_model(cfg: PipelineConfig) -> torch.nn.Module:
    m = cfg.model
    seed_everything(cfg.train.seed)
    model = build_model(
        m.name,
        len(cfg.data.classes),
        pretrained=m.pretrained,
        weights=m.weights,
        drop_rate=m.drop_rate,
    )
    apply_freeze(model, m.freeze)
    return model


def train_stage(
    manifest_uri: str,
    cfg: PipelineConfig,
    tracker: Tracker,
    *,
    progress: Progress = silent,
) -> TrainOutcome:
    """Train from a manifest; resumes when the run folder already holds checkpoints.

    Under torchrun every process calls this with the same arguments: each joins the process
    group and trains on its share of every global batch (train.batch_size / world size); rank 0
    alone writes the run folder and records through `tracker` (the others get a NullTracker).
    """
    device = pick_device(cfg.train.device)
    world = distributed.init_from_env(device.type)
    if world.distributed and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
    if cfg.train.batch_size % world.size:
        raise ValueError(
            f"train.batch_size {cfg.train.batch_size} is not a multiple of the {world.size}"
            " training processes; pick a batch size divisible by the process count"
        )
    if not world.is_main:
        tracker, progress = NullTracker(tracker.run_id), silent
    manifest = mf.read(manifest_uri)
    run_dir = Path(cfg.work_dir) / "runs" / tracker.run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    if world.is_main:
        (run_dir / "config.yaml").write_text(config_to_yaml(cfg))
    model = make_model(cfg)
    spec = input_spec(model, cfg.train.image_size)
    model.to(device)
    channels_last = cfg.train.channels_last and device.type == "cuda"
    if channels_last:
        model.to(memory_format=torch.channels_last)
    dtype = amp_dtype(device, cfg.train.amp)
    use_features = cfg.train.feature_cache and is_head_only(model) and not cfg.train.augment.enabled
    # Rank 0 decodes the images and extracts features; the other ranks then read its caches.
    with distributed.main_first():
        data = prepare(manifest, cfg, spec, progress)
        feats = (
            extract(
                model,
                data.cache,
                spec,
                device,
                channels_last=channels_last,
                dtype=dtype,
                folder=data.cache.path,
                progress=progress("backbone features", len(data.cache.images)),
            )
            if use_features
            else None
        )
    if world.is_main:
        _record_inputs(tracker, cfg, manifest, manifest_uri, run_dir, data)

    params = fit_params(cfg, data.labels["train"], len(data.classes))
    gbs, seed, balanced = cfg.train.batch_size, cfg.train.seed, cfg.train.sampler == "balanced"
    bs = gbs // world.size
    if feats is not None:
        feats = feats.to(device)
        net: torch.nn.Module = HeadOnFeatures(model.get_classifier(), cfg.model.drop_rate)
        train_fs = FeatureSet(feats[data.rows["train"]], data.labels["train"])
        dev_fs = FeatureSet(feats[data.rows["dev"]], data.labels["dev"])

        def train_batches(epoch: int):
            return make_loader(
                train_fs,
                batch_size=bs,
                shuffle=True,
                seed=seed,
                epoch=epoch,
                balanced=balanced,
                labels=data.labels["train"],
                rank=world.rank,
                world=world.size,
            )

        def dev_batches():
            return make_loader(dev_fs, batch_size=gbs, shuffle=False, seed=seed)

        def prep(x: torch.Tensor) -> torch.Tensor:
            return x

        train_prep = prep
        set_mode = net.train
    else:
        net = model
        normalize = Normalize(spec, channels_last).to(device)
        aug = cfg.train.augment
        per_image = aug.enabled and aug.backend == "workers"
        workers = cfg.train.num_workers
        if workers is None:
            workers = default_workers(per_image, device)
        pin = device.type == "cuda"
        train_rows, train_labels = data.rows["train"], data.labels["train"]
        if per_image:
            train_ds: Dataset = TrainImages(data.cache, train_rows, train_labels, spec.size, aug)
        elif aug.enabled:  # whole cached images; the crop happens on the device
            train_ds = EvalImages(data.cache, train_rows, train_labels, data.cache.size)
        else:
            train_ds = EvalImages(data.cache, train_rows, train_labels, spec.size)
        if aug.enabled and not per_image:
            augment = BatchAugment(aug, spec.size)

            def train_prep(x: torch.Tensor) -> torch.Tensor:
                return normalize(augment(x))
        else:
            train_prep = normalize
        dev_ds = EvalImages(data.cache, data.rows["dev"], data.labels["dev"], spec.size)
        # Streaming from shards: each epoch visits the shards a window at a time.
        streamed = isinstance(data.cache.images, ShardedImages)
        blocks = data.cache.images.blocks(train_rows) if streamed else None

        def image_loader(epoch: int, persistent: bool = False):
            return make_loader(
                train_ds,
                blocks=blocks,
                window=cfg.shared.shuffle_window,
                batch_size=bs,
                shuffle=True,
                seed=seed,
                epoch=epoch,
                balanced=balanced,
                labels=train_labels,
                num_workers=workers,
                pin_memory=pin,
                rank=world.rank,
                world=world.size,
                persistent=persistent,
            )

        # Workers that only read (no per-image randomness) live across epochs.
        kept = image_loader(1, persistent=True) if workers > 0 and not per_image else None

        def train_batches(epoch: int):
            return set_epoch(kept, epoch) if kept is not None else image_loader(epoch)

        def dev_batches():
            return make_loader(dev_ds, batch_size=gbs, shuffle=False, seed=seed, pin_memory=pin)

        prep = normalize
        if cfg.train.compile:
            net = torch.compile(model)  # type: ignore[assignment]

        def set_mode() -> None:
            train_mode(model)

    steps = len(train_batches(1))  # this rank's batches = the global steps per epoch
    ckpt_dir = run_dir / "checkpoints"
    epoch_bar = progress("epochs", cfg.train.epochs)

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        tracker.log_metrics({f"epoch/{k}": v for k, v in metrics.items()}, step=epoch)
        tracker.log_artifact(ckpt.epoch_path(ckpt_dir, epoch), "checkpoints")
        epoch_bar(1)

    result = fit(
        net,
        train_batches=train_batches,
        dev_batches=dev_batches,
        prep=prep,
        train_prep=train_prep,
        set_train_mode=set_mode,
        state_module=model,
        params=params,
        steps_per_epoch=steps,
        device=device,
        checkpoint_dir=ckpt_dir,
        on_epoch=on_epoch,
        extra_state={
            "config": json.loads(cfg.model_dump_json()),
            "classes": list(data.classes),
            "manifest_hash": mf.manifest_hash(manifest),
        },
    )
    tracker.log_metrics({"best_epoch": float(result.best_epoch)})
    outcome = TrainOutcome(
        run_id=tracker.run_id,
        run_dir=str(run_dir),
        best_checkpoint=str(ckpt_dir / "best.pt"),
        best_epoch=result.best_epoch,
        last_epoch=result.last_epoch,
        resumed_from=result.resumed_from,
        stopped_early=result.stopped_early,
        feature_path=use_features,
        bad_images=int((~data.cache.ok).sum()),
        history=result.history,
    )
    if world.is_main:
        (run_dir / "train_outcome.json").write_text(json.dumps(outcome.to_dict(), indent=2))
    return outcome


def _record_inputs(
    tracker: Tracker,
    cfg: PipelineConfig,
    manifest: pd.DataFrame,
    manifest_uri: str,
    run_dir: Path,
    data: Prepared,
) -> None:
    """Params, tags, the resolved config, the manifest and the bad-image report."""
    tracker.log_params(flatten(cfg))
    tags = {
        "manifest_hash": mf.manifest_hash(manifest),
        "manifest_uri": manifest_uri,
        "dataset": str(manifest["source"].iloc[0]),
    }
    commit = git_commit()
    if commit:
        tags["code_version"] = commit
    tracker.set_tags(tags)
    tracker.log_artifact(run_dir / "config.yaml", "config")
    local_manifest = run_dir / "manifest.parquet"
    manifest.to_parquet(local_manifest, index=False)
    tracker.log_artifact(local_manifest, "manifest")
    bad = data.cache.errors
    if len(bad):
        path = run_dir / "bad_images.csv"
        bad.to_csv(path, index=False)
        tracker.log_artifact(path, "data")
    counts = mf.summary(manifest)
    counts_path = run_dir / "split_counts.csv"
    counts.to_csv(counts_path)
    tracker.log_artifact(counts_path, "data")


def load_model_from_checkpoint(
    path: str | Path, device: torch.device
) -> tuple[torch.nn.Module, dict]:
    """Rebuild the model from a checkpoint's own config (no network: weights come from the file)."""
    state = ckpt.load(path, map_location="cpu")
    cfg = PipelineConfig.model_validate(state["config"])
    import timm

    model = timm.create_model(cfg.model.name, pretrained=False, num_classes=len(state["classes"]))
    model.load_state_dict(state["model"])
    return model.to(device).eval(), state


def predict_split(
    model: torch.nn.Module,
    data: Prepared,
    split: str,
    device: torch.device,
    batch_size: int,
    tta: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities for one split; with TTA averaged over the 8 flips/rotations of the square."""
    ds = EvalImages(data.cache, data.rows[split], data.labels[split], data.spec.size)
    norm = Normalize(data.spec).to(device)
    views = DIHEDRAL if tta else DIHEDRAL[:1]
    dtype = amp_dtype(device, True)
    total = None
    labels = None
    for k, transpose in views:
        loader = make_loader(ds, batch_size=batch_size, shuffle=False, seed=0)
        probs, labels = evaluate_batches(
            model, loader, lambda x, k=k, t=transpose: norm(dihedral_view(x, k, t)), device, dtype
        )
        total = probs if total is None else total + probs
    assert total is not None and labels is not None
    return total / len(views), labels


def evaluate_stage(
    manifest_uri: str,
    checkpoint_path: str,
    cfg: PipelineConfig,
    tracker: Tracker,
    *,
    progress: Progress = silent,
) -> EvalOutcome:
    """Score the best checkpoint on train, dev and test; log metrics, bias/variance and reports."""
    from skin import report

    manifest = mf.read(manifest_uri)
    device = pick_device(cfg.train.device)
    model, state = load_model_from_checkpoint(checkpoint_path, device)
    spec = input_spec(model, cfg.train.image_size)
    data = prepare(manifest, cfg, spec, progress)
    bs = cfg.train.batch_size
    results: dict[str, SplitMetrics] = {}
    probs_by_split: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split in mf.SPLITS:
        if len(data.rows[split]) == 0:
            continue
        probs, labels = predict_split(model, data, split, device, bs, tta=cfg.evaluate.tta)
        probs_by_split[split] = (probs, labels)
        results[split] = split_metrics(labels, probs, data.classes)
    metrics: dict[str, float] = {}
    for split, m in results.items():
        metrics |= flat_metrics(split, m)
    acc = {s: results[s].scalars["accuracy"] if s in results else float("nan") for s in mf.SPLITS}
    bv = bias_variance(acc["train"], acc["dev"], acc["test"], cfg.evaluate.human_level)
    metrics |= bv
    metrics["human_level"] = cfg.evaluate.human_level
    metrics["best_epoch"] = float(state["epoch"])
    if cfg.evaluate.tta and "test" in results:
        plain, labels = predict_split(model, data, "test", device, bs, tta=False)
        base = split_metrics(labels, plain, data.classes).scalars["balanced_accuracy"]
        metrics["test_balanced_accuracy_no_tta"] = base
        metrics["tta_gain"] = results["test"].scalars["balanced_accuracy"] - base
    tracker.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)})
    reading = diagnosis(bv["bias"], bv["variance"])
    out_dir = Path(cfg.work_dir) / "runs" / tracker.run_id / "report"
    report.write_reports(
        out_dir,
        results,
        probs_by_split,
        data,
        metrics,
        reading,
        state.get("history", []),
        cfg,
        manifest,
    )
    tracker.log_artifact(out_dir, "report")
    tracker.set_tags({"diagnosis": reading})
    model_uri = None
    if cfg.tracking.log_model:
        example = np.zeros((2, 3, spec.size, spec.size), dtype=np.float32)  # batch > 1
        model_uri = tracker.log_model(  # with the exact weights a registered version serves
            model.cpu().float(), example, None, checkpoint=Path(checkpoint_path)
        )
    return EvalOutcome(tracker.run_id, metrics, reading, str(out_dir), model_uri=model_uri)
