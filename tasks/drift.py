"""The check-drift task: compare a dataset with the reference model's training data; the logic
lives in skin.monitor.drift, the record goes to its own MLflow run (tagged skin.stage=check-drift)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from skin.base.config import PipelineConfig, config_digest, digest
from skin.base.runs import cache_root
from skin.data import manifest as mf
from skin.data.stages import ListingRef, read_listing, source_uri
from skin.monitor.drift import (
    DriftReport,
    Reference,
    backbone,
    check_drift,
    drift_params,
    write_report,
)
from skin.track.tracking import MLflowTracker, tracked_run
from tasks.caching import IO_RETRIES, Names, keyed_on
from tasks.training import _tags

DRIFT_SECTIONS = ("drift", "data", "model", "train.image_size", "tracking", "work_dir")
STAGE_TAG = "skin.stage"
UNIT_TAG = "skin.drift.unit"  # lesions or images: what the tests took as independent


def drift_report(listing: ListingRef, reference: Reference, config: PipelineConfig) -> DriftReport:
    """The current listing against the reference's train and dev rows, with the reference
    model's backbone (or the configured one) for embeddings."""
    current = read_listing(listing.uri).assign(source=source_uri(config.data.uri))
    manifest = mf.read(reference.manifest_uri)
    params = drift_params(config.drift)
    model = spec = None
    if params.embeddings:
        n = len(config.data.classes)
        model, spec = backbone(reference.checkpoint, config.model, config.train.image_size, n)
    return check_drift(
        manifest,
        current,
        params,
        cache_root(config.work_dir),
        model=model,
        spec=spec,
        names=(reference.label, config.data.uri),
    )


def drift_experiment(experiment: str) -> str:
    """Drift checks get an experiment of their own beside the training runs' (`<name>-drift`),
    so the runs table of the training experiment lists trainings only."""
    return f"{experiment}-drift"


@task(
    name="check-drift",
    cache_policy=keyed_on(
        "listing.fingerprint",
        "reference.manifest_hash",
        "reference.checkpoint_sha",
        config_sections=DRIFT_SECTIONS,
        names=Names(files=("files",), runs=("mlflow_run_id",)),
    ),
    **IO_RETRIES,
)
def check_drift_task(
    listing: ListingRef, reference: Reference, config: PipelineConfig
) -> dict[str, Any]:
    """Run the drift checks and record the report (table, chart, metrics) in an MLflow run."""
    report = drift_report(listing, reference, config)
    key = digest(  # as the cache key: a check with another backbone writes its own folder
        listing.fingerprint,
        reference.manifest_hash,
        reference.checkpoint_sha,
        config_digest(config, ("drift", "model")),
    )
    files = write_report(report, Path(config.work_dir) / "drift" / key)
    tracker = MLflowTracker(
        config.tracking.tracking_uri,
        drift_experiment(config.tracking.experiment),
        run_name=f"check-drift-{listing.fingerprint[:8]}",
        tags=_tags({STAGE_TAG: "check-drift", "skin.drift.reference": reference.label}),
    )
    with tracked_run(tracker):
        tracker.log_params(_params(config, reference, listing))
        tracker.log_metrics(report.metrics())
        for path in files.values():
            tracker.log_artifact(path, "drift")
        tracker.set_tags({"drift_detected": str(report.drifted).lower(), UNIT_TAG: report.unit})
        tracker.set_description(report.markdown())
    return {
        **report.to_dict(),
        "markdown": report.markdown(),
        "mlflow_run_id": tracker.run_id,
        "mlflow_url": tracker.url(),
        "files": {k: str(v) for k, v in files.items()},
    }


def _params(config: PipelineConfig, reference: Reference, listing: ListingRef) -> dict[str, str]:
    params = {f"drift.{k}": str(v) for k, v in config.drift.model_dump().items()}
    return params | {
        "data.uri": config.data.uri,
        "listing_fingerprint": listing.fingerprint,
        "reference": reference.label,
        "reference_manifest_hash": reference.manifest_hash,
        "reference_run_id": str(reference.run_id),
    }
