"""What every flow shares: resolving the config, calling a task and noting whether it ran."""

from __future__ import annotations

import logging
from typing import Any

from prefect import Task, get_run_logger, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.exceptions import MissingContextError

from flows.outcomes import ShardsResult
from skin.base.config import PipelineConfig, load_config
from skin.base.runs import cache_root
from skin.data.audit import AuditRef
from skin.data.location import DatasetState
from skin.data.stages import (
    LeakReport,
    ListingRef,
    ManifestRef,
    SuspectReport,
    audit_inputs,
    latest_manifest,
    manifest_ref,
    previous_for,
    set_latest,
)
from skin.data.storage import check_reachable as check_data_reachable
from skin.data.storage import join_uri, read_uri
from skin.track.tracking import check_reachable as check_tracking_reachable
from skin.track.tracking import resolve_tracking_uri
from skin.train.outcome import TrainOutcome
from skin.train.sources import check_available as check_weights
from tasks.data import audit_task, list_task, split_task, undersample_task
from tasks.shards import build_shard_task, finish_shards_task, shard_plan
from tasks.training import decode_images_task, train_task


def resolve_config(
    config_path: str | None, overrides: dict[str, Any] | None, data_uri: str | None
) -> PipelineConfig:
    """YAML file ← overrides (dotted keys) ← data_uri; validated before any work starts."""
    merged = dict(overrides or {})
    if data_uri:
        merged["data.uri"] = data_uri
    return load_config(config_path, merged)


def flow_config(
    config_path: str | None,
    overrides: dict[str, Any] | None,
    data_uri: str | None,
    *,
    tracking: bool = True,
    training: bool = False,
) -> PipelineConfig:
    """A flow's one config boundary: validated once, data (and tracking, and for a flow that
    trains the pretrained weights) reachable, then typed sections go to the tasks."""
    cfg = resolve_config(config_path, overrides, data_uri)
    preflight(cfg, tracking=tracking, training=training)
    return cfg


def preflight(cfg: PipelineConfig, *, tracking: bool = True, training: bool = False) -> None:
    """Reachability of the data, the tracking server and (`training`) the pretrained weights:
    checked before any stage runs, not after listing, splitting and decoding."""
    check_data_reachable(cfg.data.uri)
    if tracking:
        check_tracking_reachable(resolve_tracking_uri(cfg.tracking.tracking_uri))
    if training:
        check_weights(cfg.model.name, cfg.model.pretrained, cfg.model.weights)


REFRESH_HINT = "refresh=true runs it again (deployments: --param refresh=true; skin run --refresh)"


def call(task: Task, stages: dict[str, str], *, refresh: bool = False, **kwargs: Any) -> Any:
    """Run a task; record 'ran' or 'cached' under its name (users and tests read this), and say
    in the run's log when it came from the cache."""
    runner = task.with_options(refresh_cache=True) if refresh else task
    state = runner(**kwargs, return_state=True)
    stages[task.name] = "cached" if state.name == "Cached" else "ran"
    if stages[task.name] == "cached":
        _log().info(
            "%s came from the cache (same inputs, config and code); %s", task.name, REFRESH_HINT
        )
    return state.result()


def cached_note(stages: dict[str, str]) -> str | None:
    """The line a run's artifact carries when some of its stages came from the cache."""
    cached = [name for name, how in stages.items() if how == "cached"]
    if not cached:
        return None
    return f"From the cache (same inputs, config and code): {', '.join(cached)}; {REFRESH_HINT}."


def publish_stages(key: str, title: str, stages: dict[str, str]) -> None:
    """A single-stage run's Prefect artifact: which stages ran and which came from the cache."""
    lines = [f"# {title}", "", *(f"- {name}: {how}" for name, how in stages.items())]
    note = cached_note(stages)
    create_markdown_artifact(key=key, markdown="\n".join([*lines, *(["", note] if note else [])]))


def _log() -> Any:
    """The flow run's logger, or this module's outside a run."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


def resolve_manifest(reference: str, cfg: PipelineConfig) -> ManifestRef:
    """'latest' (the dataset's newest manifest) or a manifest URI."""
    if reference == "latest":
        ref = latest_manifest(DatasetState.of(cfg))
        if ref is None:
            raise ValueError(
                f"no manifest yet for {cfg.data.uri}: run the split stage first (skin split)"
            )
        return ref
    return manifest_ref(reference)


def publish_audit(
    audit: AuditRef, report: LeakReport | None = None, suspects: SuspectReport | None = None
) -> str:
    """The audit summary (with the leaks against a manifest, if any) as Prefect artifact
    `skin-audit`; returns the Markdown."""
    text = read_uri(join_uri(audit.uri, "summary.md")).decode()
    if report is not None:
        text += (
            f"\n## Held against a manifest\n\n{report.pairs} near-duplicate pairs would have"
            f" leaked (they straddle its splits); {report.test_images_leaked} test images have a"
            f" copy in another split (`{report.leaks_uri}`).\n"
        )
        if report.effect:
            rows = [
                f"| {m} | {v['all']:.4f} | {v['without_leaks']:.4f} | {v['change']:+.4f} |"
                for m, v in report.effect.items()
            ]
            text += "\n| test metric | all | without leaked | change |\n|---|---|---|---|\n"
            text += "\n".join(rows) + "\n"
    if suspects is not None:
        per = " · ".join(f"{c}: {n}" for c, n in sorted(suspects.per_class.items())) or "none"
        text += (
            f"\n## Suspect labels\n\n{suspects.suspects} of {suspects.ranked} out-of-fold images"
            f" are label issues (cleanlab); per given class: {per}. Table:"
            f" `{suspects.label_issues_uri}`, contact sheet: `{suspects.sheet_uri}`.\n"
        )
    create_markdown_artifact(key="skin-audit", markdown=text, description="skin data audit")
    return text


def audit_stage(
    cfg: PipelineConfig, stages: dict[str, str], listing: ListingRef, *, refresh: bool
) -> AuditRef:
    """The audit task, keyed on the listing and on the contents of what its exclusions read."""
    suspects, inputs = audit_inputs(cfg.audit, cfg.state_uri, cfg.data.uri)
    return call(
        audit_task,
        stages,
        refresh=refresh,
        listing=listing,
        config=cfg,
        suspects_uri=suspects,
        inputs_hash=inputs,
        backbone=backbone_of(cfg) if cfg.audit.embeddings else None,
    )


def backbone_of(cfg: PipelineConfig) -> str:
    """The model whose embeddings confirm the audit's hash pairs, as its cache key reads it."""
    m = cfg.model
    return f"{m.name}|weights={m.weights}|pretrained={m.pretrained}"


def data_stages(
    cfg: PipelineConfig, stages: dict[str, str], *, refresh: bool, previous: str | None = "latest"
) -> tuple[ListingRef, ManifestRef]:
    """List → audit (when `audit.enabled`) → split → undersample; the manifest becomes the
    dataset's latest.

    `previous`: 'latest' (stay stable against the dataset's newest manifest), a manifest URI, or
    None for a fresh split.
    """
    listing = call(list_task, stages, config=cfg)
    audit = audit_stage(cfg, stages, listing, refresh=refresh) if cfg.audit.enabled else None
    if audit is not None:
        publish_audit(audit)
    prev_uri = None
    if previous == "latest":
        latest = latest_manifest(DatasetState.of(cfg))
        prev_uri = previous_for(latest, listing.fingerprint, cfg.split)
    elif previous:
        prev_uri = previous
    prev = manifest_ref(prev_uri) if prev_uri else None  # keyed on its content, not its name
    split = call(
        split_task,
        stages,
        refresh=refresh,
        listing=listing,
        config=cfg,
        previous=prev,
        audit=audit,
    )
    manifest = call(undersample_task, stages, refresh=refresh, split=split, config=cfg)
    set_latest(manifest, DatasetState.of(cfg))
    return listing, manifest


def shard_stages(
    cfg: PipelineConfig, manifest: ManifestRef, stages: dict[str, str]
) -> ShardsResult:
    """Decode the manifest's images into shared shards: one task per shard on the flow's task
    runner (threads, or a Dask cluster), then the index. Shards already built are skipped."""
    plan = shard_plan(manifest.uri, cfg)
    futures = build_shard_task.map(
        manifest=unmapped(manifest),
        size=unmapped(plan["size"]),
        index=list(range(plan["shards"])),
        shard_rows=unmapped(plan["shard_rows"]),
        uri=unmapped(plan["uri"]),
        fetch_root=unmapped(str(cache_root(cfg.work_dir))),
    )
    built = [f.result() for f in futures]
    # Decoded in this run: neither a Prefect cache hit nor a shard found complete in the store.
    fresh = sum(
        f.state.name != "Cached" and not b.reused for f, b in zip(futures, built, strict=True)
    )
    meta = finish_shards_task(plan["uri"], plan["count"], plan["size"], plan["shard_rows"])
    stages[build_shard_task.name] = "ran" if fresh else "cached"
    return ShardsResult(
        uri=plan["uri"],
        shards=len(built),
        built=fresh,
        reused=len(built) - fresh,
        bad=meta["bad"],
        count=meta["count"],
    )


def model_stages(
    cfg: PipelineConfig,
    stages: dict[str, str],
    manifest: ManifestRef,
    *,
    refresh: bool,
    run_id: str | None = None,
) -> tuple[dict[str, Any], TrainOutcome]:
    """[Shards →] decode → train; returns the image-cache report and the training outcome."""
    if cfg.shared.uri:  # decode once for every machine, fanned out over the task runner
        shard_stages(cfg, manifest, stages)
    images = call(decode_images_task, stages, refresh=refresh, manifest=manifest, config=cfg)
    trained = call(
        train_task,
        stages,
        refresh=refresh or run_id is not None,
        manifest=manifest,
        config=cfg,
        run_id=run_id,
    )
    return images, trained
