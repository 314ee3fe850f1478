"""One flow per stage, each taking its inputs by reference, so any stage can run (or redeploy) alone."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import flow

from flows.common import (
    call,
    data_stages,
    flow_config,
    model_stages,
    publish_stages,
    resolve_config,
    resolve_manifest,
)
from flows.outcomes import EvaluateResult, ListResult, SplitResult, TrainResult
from skin.base.runs import RunPaths
from skin.data.stages import manifest_ref
from tasks.data import list_task
from tasks.training import evaluate_task


@flow(name="skin-list")
def list_flow(
    data_uri: str | None = None,
    config_path: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> ListResult:
    """List a dataset: counts per class, skipped objects with reasons, and its fingerprint."""
    cfg = flow_config(config_path, overrides, data_uri, tracking=False)
    return ListResult(**asdict(call(list_task, {}, config=cfg)))


@flow(name="skin-split")
def split_flow(
    data_uri: str | None = None,
    config_path: str | None = None,
    overrides: dict[str, Any] | None = None,
    previous: str | None = "latest",
    refresh: bool = False,
) -> SplitResult:
    """List, split and undersample; the manifest becomes the dataset's latest.

    `previous`: 'latest' (default: keep earlier assignments), a manifest URI, or None (fresh).
    """
    cfg = flow_config(config_path, overrides, data_uri, tracking=False)
    stages: dict[str, str] = {}
    listing, manifest = data_stages(cfg, stages, refresh=refresh, previous=previous)
    publish_stages("skin-split-summary", f"skin split: manifest `{manifest.hash}`", stages)
    return SplitResult(manifest, listing, stages)


@flow(name="skin-train")
def train_flow(
    manifest: str = "latest",
    data_uri: str | None = None,
    config_path: str | None = None,
    overrides: dict[str, Any] | None = None,
    run_id: str | None = None,
    refresh: bool = False,
) -> TrainResult:
    """Train from a manifest (URI, or 'latest' for the dataset); `run_id` resumes that run."""
    cfg = flow_config(config_path, overrides, data_uri, training=True)
    ref = resolve_manifest(manifest, cfg)
    stages: dict[str, str] = {}
    _, outcome = model_stages(cfg, stages, ref, refresh=refresh, run_id=run_id)
    publish_stages("skin-train-summary", f"skin train: MLflow run `{outcome.run_id}`", stages)
    return TrainResult(**asdict(outcome), manifest_uri=ref.uri, stages=stages)


@flow(name="skin-evaluate")
def evaluate_flow(
    run_id: str,
    manifest: str | None = None,
    checkpoint: str | None = None,
    config_path: str | None = None,
    overrides: dict[str, Any] | None = None,
    refresh: bool = False,
) -> EvaluateResult:
    """Evaluate a training run's best checkpoint (or `checkpoint`) on its manifest (or `manifest`).

    The run's own saved config is the base; `config_path`/`overrides` adjust evaluation settings.
    """
    base = resolve_config(config_path, overrides, None)
    run = RunPaths(base.work_dir, run_id)
    cfg = (
        resolve_config(str(run.config), overrides, None)
        if run.config.exists() and not config_path
        else base
    )
    ref = manifest_ref(manifest or str(run.manifest))
    ckpt = checkpoint or str(run.best_checkpoint)
    stages: dict[str, str] = {}
    outcome = call(
        evaluate_task,
        stages,
        refresh=refresh,
        manifest=ref,
        run_id=run_id,
        checkpoint=ckpt,
        config=cfg,
    )
    publish_stages("skin-evaluate-summary", f"skin evaluate: MLflow run `{run_id}`", stages)
    return EvaluateResult(**asdict(outcome), stages=stages)
