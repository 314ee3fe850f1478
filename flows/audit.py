"""The audit flow: list and audit a dataset; held against a manifest (and a run) on request."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.common import call, flow_config, publish_audit, resolve_manifest
from skin.base.runs import RunPaths
from skin.data.stages import audit_against
from tasks.data import audit_task, list_task


@flow(name="skin-audit")
def audit_flow(
    data_uri: str | None = None,
    config_path: str | None = None,
    overrides: dict[str, Any] | None = None,
    manifest: str | None = None,
    run_id: str | None = None,
    refresh: bool = False,
) -> dict[str, Any]:
    """List and audit; with `manifest` ('latest' or a URI), the pairs that straddle its splits;
    with `run_id` too, how that run's test metrics move without the leaked test images."""
    cfg = flow_config(config_path, overrides, data_uri, tracking=False)
    stages: dict[str, str] = {}
    listing = call(list_task, stages, config=cfg)
    audit = call(audit_task, stages, refresh=refresh, listing=listing, config=cfg)
    report = None
    if manifest:
        ref = resolve_manifest(manifest, cfg)
        run_report = RunPaths(cfg.work_dir, run_id).report if run_id else None
        report = audit_against(audit, ref, cfg.data.known_classes, run_report)
    summary = publish_audit(audit, report)
    return {
        "audit": audit.to_dict(),
        "leaks": report.to_dict() if report else None,
        "summary": summary,
        "stages": stages,
    }
