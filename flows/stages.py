"""One flow per stage, each taking its inputs by reference, so any stage can run (or redeploy) alone."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import flow

from flows.common import call, preflight, resolve_config, resolve_manifest, train_key
from skin.datastages import latest_manifest, manifest_ref, previous_for, set_latest
from tasks.data import list_task, split_task, undersample_task
from tasks.training import evaluate_task, prepare_images_task, train_task


@flow(name="skin-list")
def list_flow(
    data_uri: str | None = None,
    config_path: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """List a dataset: counts per class, skipped objects with reasons, and its fingerprint."""
    cfg = resolve_config(config_path, overrides, data_uri)
    preflight(cfg, tracking=False)
    return call(list_task, {}, config=cfg.model_dump(mode="json")).to_dict()


@flow(name="skin-split")
def split_flow(
    data_uri: str | None = None,
    config_path: str | None = None,
    overrides: dict[str, Any] | None = None,
    previous: str | None = "latest",
    refresh: bool = False,
) -> dict[str, Any]:
    """List, split and undersample; the manifest becomes the dataset's latest.

    `previous`: 'latest' (default: keep earlier assignments), a manifest URI, or None (fresh).
    """
    cfg = resolve_config(config_path, overrides, data_uri)
    preflight(cfg, tracking=False)
    config = cfg.model_dump(mode="json")
    stages: dict[str, str] = {}
    listing = call(list_task, stages, config=config)
    prev_uri = None
    if previous == "latest":
        latest = latest_manifest(cfg.work_dir, cfg.data.uri)
        prev_uri = previous_for(latest, listing.fingerprint, cfg.split)
    elif previous:
        prev_uri = manifest_ref(previous).uri
    split = call(
        split_task,
        stages,
        refresh=refresh,
        listing_uri=listing.uri,
        listing_fingerprint=listing.fingerprint,
        config=config,
        previous_uri=prev_uri,
    )
    manifest = call(
        undersample_task,
        stages,
        refresh=refresh,
        split=split,
        split_hash=split.hash,
        config=config,
    )
    set_latest(manifest, cfg.work_dir, cfg.data.uri)
    return {"manifest": manifest.to_dict(), "listing": listing.to_dict(), "stages": stages}


@flow(name="skin-train")
def train_flow(
    manifest: str = "latest",
    data_uri: str | None = None,
    config_path: str | None = None,
    overrides: dict[str, Any] | None = None,
    run_id: str | None = None,
    refresh: bool = False,
) -> dict[str, Any]:
    """Train from a manifest (URI, or 'latest' for the dataset); `run_id` resumes that run."""
    cfg = resolve_config(config_path, overrides, data_uri)
    preflight(cfg)
    config = cfg.model_dump(mode="json")
    ref = resolve_manifest(manifest, cfg)
    stages: dict[str, str] = {}
    call(
        prepare_images_task,
        stages,
        refresh=refresh,
        manifest_uri=ref.uri,
        manifest_hash=ref.hash,
        config=config,
    )
    outcome = call(
        train_task,
        stages,
        refresh=refresh or run_id is not None,
        manifest_uri=ref.uri,
        manifest_hash=ref.hash,
        config=config,
        train_key=train_key(cfg, ref.hash),
        run_id=run_id,
    )
    return {**asdict(outcome), "manifest_uri": ref.uri, "stages": stages}


@flow(name="skin-evaluate")
def evaluate_flow(
    run_id: str,
    manifest: str | None = None,
    checkpoint: str | None = None,
    config_path: str | None = None,
    overrides: dict[str, Any] | None = None,
    refresh: bool = False,
) -> dict[str, Any]:
    """Evaluate a training run's best checkpoint (or `checkpoint`) on its manifest (or `manifest`).

    The run's own saved config is the base; `config_path`/`overrides` adjust evaluation settings.
    """
    from pathlib import Path

    base = resolve_config(config_path, overrides, None)
    run_dir = Path(base.work_dir) / "runs" / run_id
    saved = run_dir / "config.yaml"
    cfg = (
        resolve_config(str(saved), overrides, None) if saved.exists() and not config_path else base
    )
    manifest_uri = manifest or str(run_dir / "manifest.parquet")
    ref = manifest_ref(manifest_uri)
    ckpt = checkpoint or str(run_dir / "checkpoints" / "best.pt")
    stages: dict[str, str] = {}
    outcome = call(
        evaluate_task,
        stages,
        refresh=refresh,
        manifest_uri=ref.uri,
        manifest_hash=ref.hash,
        run_id=run_id,
        checkpoint=ckpt,
        config=cfg.model_dump(mode="json"),
    )
    return {**asdict(outcome), "stages": stages}
