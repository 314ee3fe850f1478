"""skin-check-drift: is the current dataset still like the data the champion was trained on?"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.common import call, flow_config
from flows.outcomes import DriftResult
from skin.base.config import PipelineConfig, digest
from skin.data.stages import ListingRef
from skin.monitor.drift import Reference, resolve_reference
from skin.track.refs import CHAMPION, AliasRef, ModelRef, champion, parse_model_ref
from skin.track.tracking import MLflowRegistry, resolve_tracking_uri
from tasks.data import list_task
from tasks.drift import check_drift_task
from tasks.events import DRIFT_DETECTED, dataset_resource, emit


def champion_ref(cfg: PipelineConfig) -> AliasRef:
    """The default reference: the registered model's champion."""
    return champion(cfg.tracking.registered_model)


def require_champion(cfg: PipelineConfig) -> None:
    """The default reference exists, or the error says what to do (not MLflow's "not found")."""
    name = cfg.tracking.registered_model
    registry = MLflowRegistry(cfg.tracking.tracking_uri)
    if registry.by_alias(name, CHAMPION) is None:
        raise LookupError(
            f"no champion of {name} at {resolve_tracking_uri(cfg.tracking.tracking_uri)} to"
            " compare the data with: register one first (`skin run`, or the pipeline deployment,"
            " promotes a model through the gate), or name the reference with --against (against="
            " for a deployment): models:/NAME/VERSION, an MLflow run id or a manifest URI"
        )


def reference_for(
    against: ModelRef, cfg: PipelineConfig, *, checkpoint: bool | None = None
) -> Reference:
    """`against` resolved to a manifest (and, for embeddings, its checkpoint) under work_dir."""
    dst = Path(cfg.work_dir) / "drift" / "reference" / digest(str(against))
    with_model = cfg.drift.embeddings if checkpoint is None else checkpoint
    return resolve_reference(against, cfg.tracking.tracking_uri, dst, checkpoint=with_model)


def drift_stage(
    cfg: PipelineConfig,
    stages: dict[str, str],
    listing: ListingRef,
    reference: Reference,
    *,
    refresh: bool = False,
) -> dict[str, Any]:
    """Run check-drift, publish the report (Prefect table + markdown), emit DRIFT_DETECTED."""
    result = call(
        check_drift_task,
        stages,
        refresh=refresh,
        listing=listing,
        reference=reference,
        config=cfg,
    )
    rows = [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        for row in result["checks"]
    ] or [{"check": "none", "detail": result["verdict"]}]
    create_table_artifact(
        key="skin-drift-table", table=rows, description=f"drift checks of {cfg.data.uri}"
    )
    link = f"\n\nMLflow: {result['mlflow_url']}" if result.get("mlflow_url") else ""
    create_markdown_artifact(
        key="skin-drift-report",
        markdown=result["markdown"] + link,
        description=f"drift of {cfg.data.uri} against {reference.label}",
    )
    get_run_logger().info(
        "drift of %s against %s: %s", cfg.data.uri, reference.label, result["verdict"]
    )
    if result["drifted"]:
        payload = {"verdict": result["verdict"], "reference": reference.label}
        emit(DRIFT_DETECTED, dataset_resource(cfg.data.uri), payload)
    return result


@flow(name="skin-check-drift", log_prints=True)
def check_drift_flow(
    data_uri: str | None = None,
    against: str | None = None,
    config_path: str | None = None,
    overrides: dict[str, Any] | None = None,
    refresh: bool = False,
) -> DriftResult:
    """Compare the dataset at `data_uri` with `against` (default: the champion's training data:
    models:/NAME@champion; also models:/NAME/VERSION, a run id or a manifest URI)."""
    cfg = flow_config(config_path, overrides, data_uri)
    ref = parse_model_ref(against) if against else None  # the flow's boundary: a bad one fails here
    if ref is None:
        require_champion(cfg)
        ref = champion_ref(cfg)
    stages: dict[str, str] = {}
    listing = call(list_task, stages, config=cfg)
    reference = reference_for(ref, cfg)
    result = drift_stage(cfg, stages, listing, reference, refresh=refresh)
    return DriftResult.of(result, reference, stages)
