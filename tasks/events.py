"""The pipeline's own Prefect events: what automations (notifications, chained runs) listen to."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from prefect.events import emit_event

from skin.release.registry import CHAMPION, Registration

MODEL_PROMOTED = "skin.model.promoted"  # a version became champion
DRIFT_DETECTED = "skin.drift.detected"  # the data moved away from the champion's training data
RETRAIN_SKIPPED = "skin.retrain.skipped"  # the pipeline decided not to retrain, and why
NOTIFY_TEST = "skin.notify.test"  # `skin notify test`: does a post reach the webhook?


def dataset_resource(data_uri: str) -> dict[str, str]:
    """`skin.dataset.<name>` (the last path part of the URI) with the URI as a label, the same
    resource a `skin.dataset.updated` event names."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", data_uri.rstrip("/").rsplit("/", 1)[-1]) or "data"
    return {"prefect.resource.id": f"skin.dataset.{name}", "skin.data_uri": data_uri}


def model_resource(name: str, version: str) -> dict[str, str]:
    """`skin.model.<registered name>` with the version as a label."""
    return {"prefect.resource.id": f"skin.model.{name}", "skin.version": str(version)}


def emit(event: str, resource: dict[str, str], payload: dict[str, Any] | None = None) -> None:
    """Emit one event to the Prefect API this process uses (a failure to send is logged, never
    raised: a lost notification must not fail the stage that announced it)."""
    emit_event(event=event, resource=resource, payload=payload or {})


def promotion_payload(reg: Registration, run_id: str, tracking_uri: str) -> dict[str, Any]:
    """What a notification says about a promotion: the scores, the champion it replaced, the run,
    and the version's page when the tracking server has a UI."""
    payload: dict[str, Any] = {**reg.to_dict(), "run_id": run_id}
    if tracking_uri.startswith(("http://", "https://")):
        parts = urlsplit(tracking_uri)  # never user:token@ into an event or a post
        host = parts.netloc.rsplit("@", 1)[-1]
        base = urlunsplit((parts.scheme, host, parts.path, "", "")).rstrip("/")
        payload["url"] = f"{base}/#/models/{reg.name}/versions/{reg.version}"
    return payload


def emit_promotion(reg: Registration, run_id: str, tracking_uri: str) -> bool:
    """`skin.model.promoted` when this registration made the new version champion."""
    if reg.alias != CHAMPION or not reg.created:  # the champion's own weights: nothing moved
        return False
    payload = promotion_payload(reg, run_id, tracking_uri)
    emit(MODEL_PROMOTED, model_resource(reg.name, reg.version), payload)
    return True
