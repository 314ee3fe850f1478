"""The full pipeline flow: list → split → undersample → decode → train → evaluate, incrementally."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.common import cached_note, call, data_stages, flow_config, model_stages
from flows.drift import champion_ref, drift_stage, reference_for
from flows.outcomes import NotRetrained, PipelineResult
from skin.base.config import PipelineConfig
from skin.data import manifest as mf
from skin.data.audit import load_audit
from skin.data.stages import ListingRef, ManifestRef, read_listing, read_skipped
from skin.evaluate.report import abstention_line, bias_variance_line, metrics_table_text
from skin.monitor.drift import new_fraction
from skin.release.registry import Registration
from skin.track.refs import CHAMPION
from skin.track.tracking import MLflowRegistry
from tasks.events import RETRAIN_SKIPPED, dataset_resource, emit
from tasks.training import evaluate_task, register_task


def artifact_markdown(result: PipelineResult) -> str:
    """The Prefect artifact `skin-run-summary`: where the MLflow run is, and the key numbers."""
    metrics = result.metrics
    table = metrics_table_text(metrics).to_markdown()
    link = f"[{result.run_id}]({result.mlflow_url})" if result.mlflow_url else result.run_id
    stages = ", ".join(f"{k}: {v}" for k, v in result.stages.items())
    cached = cached_note(result.stages)
    unk = abstention_line(metrics)
    return "\n".join(
        [
            f"# skin run {link}",
            "",
            f"Manifest `{result.manifest_hash}` · best epoch {result.best_epoch} · stages: {stages}",
            "",
            *([cached, ""] if cached else []),
            table,
            "",
            *([f"Unknown lesions: {unk}", ""] if unk else []),
            _registration_line(result.registration, result.holdout),
            "",
            bias_variance_line(metrics, result.diagnosis),
        ]
    )


NAMED = 100  # skipped objects named one by one in the Prefect report; the rest are counted


def publish_input_report(listing: ListingRef, bad: list[dict[str, str]]) -> None:
    """Bad input as a Prefect table: what the listing skipped (by reason, then each object by
    key, the first hundred), what failed to decode. The MLflow run holds the full list."""
    rows = [
        {"stage": "listing", "what": reason, "count": n} for reason, n in listing.skipped.items()
    ]
    skipped = read_skipped(listing.skipped_uri) if listing.skipped_uri else None
    if skipped is not None and len(skipped):
        rows += [
            {"stage": "listing", "what": f"{r.key}: {r.reason}", "count": 1}
            for r in skipped.head(NAMED).itertuples(index=False)
        ]
        if len(skipped) > NAMED:
            more = (
                f"{len(skipped) - NAMED} more skipped objects: data/skipped_objects.csv in the run"
            )
            rows.append({"stage": "listing", "what": more, "count": len(skipped) - NAMED})
    rows += [{"stage": "decode", "what": f"{b['key']}: {b['error']}", "count": 1} for b in bad]
    if not rows:
        rows = [{"stage": "all", "what": "no bad input", "count": 0}]
    create_table_artifact(
        key="skin-input-report",
        table=rows,
        description="objects skipped or undecodable in this run's dataset",
    )


def _registration_line(reg: Registration | None, holdout: dict[str, Any] | None = None) -> str:
    if not reg and holdout:  # evaluate_stage never logs a model trained without a class
        return (
            f"Model not registered: a held-out-class run ({holdout['classes']} classes) is never"
            f" registered ({holdout['class']} was held out as the unknown class)."
        )
    if not reg:
        return "Model not registered (tracking.log_model is off)."
    before = f"{reg.champion_score:.4f}" if reg.champion_score is not None else "none"
    why = f" {reg.reason}" if reg.reason else ""
    return (
        f"Registered `{reg.name}` v{reg.version} as **{reg.alias}**"
        f" (dev balanced accuracy {reg.score:.4f}; champion before: {before}).{why}"
    )


def retrain_decision(
    cfg: PipelineConfig, stages: dict[str, str], listing: ListingRef, *, refresh: bool
) -> tuple[bool, str, dict[str, Any] | None]:
    """(retrain?, why, the drift result if check-drift ran): check-drift first when there is a
    champion (`retrain.check_drift`), then the `retrain.when` policy; no champion, retrain."""
    when, r = cfg.retrain.when, cfg.retrain
    if when == "always" and not r.check_drift:
        return True, "retrain.when is always", None
    name = cfg.tracking.registered_model
    if MLflowRegistry(cfg.tracking.tracking_uri).by_alias(name, CHAMPION) is None:
        return True, f"no champion of {name} yet", None
    drift = None
    if r.check_drift or when == "drift":
        drift = checked_drift(cfg, stages, listing, refresh=refresh, required=when == "drift")
    if when == "always":
        return True, "retrain.when is always", drift
    if when == "new-data":
        reference = reference_for(champion_ref(cfg), cfg, checkpoint=False)
        share = new_fraction(read_listing(listing.uri), mf.read(reference.manifest_uri))
        limit = r.min_new_fraction
        verdict = "exceed" if share > limit else "do not exceed"
        why = (
            f"new images ({share:.1%} of {listing.images}, not in the champion's manifest)"
            f" {verdict} retrain.min_new_fraction {limit:.1%}"
        )
        return share > limit, why, drift
    if drift is None:  # checked_drift(required=True) answers or raises; never silently nothing
        raise RuntimeError("retrain.when is 'drift' but check-drift gave no verdict")
    return bool(drift["drifted"]), f"check-drift: {drift['verdict']}", drift  # the task's record


def checked_drift(
    cfg: PipelineConfig,
    stages: dict[str, str],
    listing: ListingRef,
    *,
    refresh: bool,
    required: bool,
) -> dict[str, Any] | None:
    """check-drift against the champion (report, artifact, `skin.drift.detected`); a failure
    stops the pipeline only when the policy needs the answer."""
    try:
        reference = reference_for(champion_ref(cfg), cfg)
        return drift_stage(cfg, stages, listing, reference, refresh=refresh)
    except Exception as err:
        if required:
            raise
        get_run_logger().warning("check-drift did not run (%s): retraining goes on", err)
        return None


def not_retrained(
    cfg: PipelineConfig,
    listing: ListingRef,
    manifest: ManifestRef,
    stages: dict[str, str],
    reason: str,
    drift: dict[str, Any] | None,
) -> NotRetrained:
    """Record a stop: the result, a Prefect markdown artifact, a log line, RETRAIN_SKIPPED."""
    get_run_logger().info("not retrained (retrain.when=%s): %s", cfg.retrain.when, reason)
    publish_input_report(listing, [])
    create_markdown_artifact(
        key="skin-run-summary",
        markdown="\n".join(
            [
                "# skin pipeline: not retrained",
                "",
                f"Policy `retrain.when: {cfg.retrain.when}` · manifest `{manifest.hash}`",
                "",
                f"Reason: {reason}",
                *(["", note] if (note := cached_note(stages)) else []),
            ]
        ),
        description=f"skin pipeline on {cfg.data.uri}: not retrained",
    )
    emit(
        RETRAIN_SKIPPED,
        dataset_resource(cfg.data.uri),
        {"reason": reason, "policy": cfg.retrain.when},
    )
    return NotRetrained(
        retrained=False,
        reason=reason,
        policy=cfg.retrain.when,
        run_id=None,
        skipped=listing.skipped,
        manifest_uri=manifest.uri,
        manifest_hash=manifest.hash,
        drift=drift,
        stages=stages,
    )


def record_audit(cfg: PipelineConfig, run_id: str, manifest: ManifestRef) -> None:
    """The audit the manifest was split by (summary, clusters, exclusions) into the run's
    `audit/` artifacts, with its counts as tags; an audit on S3 is left where it is, named."""
    if not manifest.audit_uri:
        return
    ref = load_audit(manifest.audit_uri)
    tags = {
        "audit_uri": ref.uri,
        "audit_near_duplicate_pairs": str(ref.pairs),
        "audit_unusable": str(ref.unusable),
        "audit_excluded": str(ref.excluded),
    }
    local = Path(ref.uri)
    files = {"audit": local} if local.is_dir() else None
    MLflowRegistry(cfg.tracking.tracking_uri).record(run_id, tags=tags, files=files)


@flow(name="skin-pipeline", log_prints=True)
def pipeline_flow(
    data_uri: str | None = None,
    config_path: str | None = None,
    overrides: dict[str, Any] | None = None,
    refresh: bool = False,
) -> PipelineResult | NotRetrained:
    """Run every stage; unchanged inputs come from Prefect's cache (see `stages` in the result).

    `refresh=True` forces every stage to run again. After the data stages, `retrain.when`
    decides whether the model stages run (`always`, `new-data`, `drift`); a stop returns
    `retrained: False` with the `reason`.
    """
    log = get_run_logger()
    cfg = flow_config(config_path, overrides, data_uri, training=True)  # all reachable first
    stages: dict[str, str] = {}

    listing, manifest = data_stages(cfg, stages, refresh=refresh)
    log.info(
        "listed %d images (%s layout), skipped %s",
        listing.images,
        listing.layout,
        listing.skipped or "none",
    )
    retrain, reason, drift = retrain_decision(cfg, stages, listing, refresh=refresh)
    if not retrain:
        return not_retrained(cfg, listing, manifest, stages, reason, drift)
    images, trained = model_stages(cfg, stages, manifest, refresh=refresh)
    evaluated = call(
        evaluate_task,
        stages,
        refresh=refresh,
        manifest=manifest,
        run_id=trained.run_id,
        checkpoint=trained.best_checkpoint,
        config=cfg,
    )
    registration = None
    if evaluated.model_uri:
        registration = call(
            register_task,
            stages,
            refresh=refresh,
            run_id=trained.run_id,
            model_uri=evaluated.model_uri,
            config=cfg,
            manifest=manifest,
        )
    publish_input_report(listing, images["bad"])
    record_audit(cfg, trained.run_id, manifest)
    held = cfg.data.holdout_class
    result = PipelineResult(
        run_id=trained.run_id,
        skipped=listing.skipped,
        bad_images=len(images["bad"]),
        registration=registration,
        mlflow_url=evaluated.url,
        manifest_uri=manifest.uri,
        manifest_hash=manifest.hash,
        best_epoch=trained.best_epoch,
        metrics=evaluated.metrics,
        diagnosis=evaluated.diagnosis,
        report_dir=evaluated.report_dir,
        stages=stages,
        retrained=True,
        reason=reason,
        holdout=None if held is None else {"class": held, "classes": len(cfg.data.known_classes)},
        drift=drift,
    )
    create_markdown_artifact(
        key="skin-run-summary",
        markdown=artifact_markdown(result),
        description=f"skin pipeline run {trained.run_id}",
    )
    return result
