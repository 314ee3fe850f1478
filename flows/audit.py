"""The audit flow: list and audit a dataset; held against a manifest (and a run) on request."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow

from flows.common import audit_stage, call, flow_config, publish_audit, resolve_manifest
from skin.base.config import PipelineConfig
from skin.base.runs import RunPaths
from skin.data.stages import (
    ListingRef,
    SuspectReport,
    audit_against,
    audit_labels,
    label_issues_uri,
)
from skin.data.storage import write_uri
from skin.track.tracking import MLflowRegistry
from tasks.data import list_task

OOF = "cv/oof_predictions.parquet"  # where `skin cv` keeps them (locally and in its MLflow run)


def suspect_labels(cfg: PipelineConfig, listing: ListingRef, cv_run: str) -> SuspectReport:
    """Suspect labels from a CV run's out-of-fold predictions (this machine's copy, else the
    run's artifact), written beside them and logged to the CV run under `audit/`."""
    registry = MLflowRegistry(cfg.tracking.tracking_uri)
    local = Path(cfg.work_dir) / "cv" / cv_run / "oof_predictions.parquet"
    if not local.is_file():
        with tempfile.TemporaryDirectory() as tmp:
            try:
                fetched = registry.download(cv_run, OOF, Path(tmp))
            except Exception as err:  # MLflow raises several kinds for a missing run or file
                raise ValueError(
                    f"no out-of-fold predictions for CV run {cv_run}: not at {local} nor {OOF}"
                    f" in its MLflow run ({err}); run `skin cv` first"
                ) from err
            oof = pd.read_parquet(fetched)
    else:
        oof = pd.read_parquet(local)
    folder = Path(cfg.work_dir) / "cv" / cv_run / "audit"
    top = cfg.audit.label_issues_top
    found = audit_labels(
        oof, cfg.data.known_classes, listing, cfg.data.uri, folder, cfg.work_dir, top
    )
    registry.record(cv_run, files={"audit": folder})
    dataset_copy = label_issues_uri(cfg.state_uri, cfg.data.uri)  # what audit.exclude reads
    write_uri(dataset_copy, (folder / "label_issues.csv").read_bytes())
    return found


@flow(name="skin-audit")
def audit_flow(
    data_uri: str | None = None,
    config_path: str | None = None,
    overrides: dict[str, Any] | None = None,
    manifest: str | None = None,
    run_id: str | None = None,
    cv_run: str | None = None,
    refresh: bool = False,
) -> dict[str, Any]:
    """List and audit; with `manifest` ('latest' or a URI), the pairs that straddle its splits;
    with `run_id` too, how that run's test metrics move without the leaked test images; with
    `cv_run`, suspect labels from that CV run's out-of-fold predictions (logged to it)."""
    cfg = flow_config(config_path, overrides, data_uri, tracking=cv_run is not None)
    stages: dict[str, str] = {}
    listing = call(list_task, stages, config=cfg)
    audit = audit_stage(cfg, stages, listing, refresh=refresh)
    report = None
    if manifest:
        ref = resolve_manifest(manifest, cfg)
        run_report = RunPaths(cfg.work_dir, run_id).report if run_id else None
        report = audit_against(audit, ref, cfg.data.known_classes, run_report)
    suspects = suspect_labels(cfg, listing, cv_run) if cv_run else None
    summary = publish_audit(audit, report, suspects)
    return {
        "audit": audit.to_dict(),
        "leaks": report.to_dict() if report else None,
        "suspects": suspects.to_dict() if suspects else None,
        "summary": summary,
        "stages": stages,
    }
