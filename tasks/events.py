"""The pipeline's own Prefect events: what automations (notifications, chained runs) listen to."""

from __future__ import annotations

import re
from typing import Any

from prefect.events import emit_event

MODEL_PROMOTED = "skin.model.promoted"  # a version became champion
DRIFT_DETECTED = "skin.drift.detected"  # the data moved away from the champion's training data
RETRAIN_SKIPPED = "skin.retrain.skipped"  # the pipeline decided not to retrain, and why


def dataset_resource(data_uri: str) -> dict[str, str]:
    """`skin.dataset.<name>` (the last path part of the URI) with the URI as a label, the same
    resource a `skin.dataset.updated` event names."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", data_uri.rstrip("/").rsplit("/", 1)[-1]) or "data"
    return {"prefect.resource.id": f"skin.dataset.{name}", "skin.data_uri": data_uri}


def model_resource(name: str, version: str) -> dict[str, str]:
    """`skin.model.<registered name>` with the version as a label."""
    return {"prefect.resource.id": f"skin.model.{name}", "skin.version": str(version)}


def emit(event: str, resource: dict[str, str], payload: dict[str, Any] | None = None) -> None:
    """Emit one event; outside a Prefect API (plain unit tests) this is a no-op by Prefect's design."""
    emit_event(event=event, resource=resource, payload=payload or {})
