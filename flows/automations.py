"""Notifications: one webhook block and the automations that post to it when a `skin-*` run
fails, a model becomes champion, or drift is found.

Declared in code, not in `prefect.yaml`: a deployment's `triggers:` can only start that
deployment (Prefect makes each one a RunDeployment automation), never send a notification.
`deploy_notifications` is idempotent: the block is overwritten and each automation is updated in
place by name (duplicates from older setups are deleted), so it runs after every `prefect deploy`.
The webhook URL is kept among the block's secrets (hidden in the UI and API), never in a file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from prefect.automations import AutomationCore, EventTrigger, Posture, SendNotification
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import get_client
from prefect.events.worker import EventsWorker
from prefect.settings import get_current_settings

from tasks.events import DRIFT_DETECTED, MODEL_PROMOTED, NOTIFY_TEST

BLOCK_NAME = "skin-notifications"
URL_ENV = "SKIN_WEBHOOK_URL"
RUN_FAILED = "skin: run failed"
PROMOTED = "skin: model promoted"
DRIFTED = "skin: drift detected"
TEST = "skin: test notification"
FAILED_STATES = ("Failed", "Crashed", "TimedOut")
# The posted JSON: `text` for Slack-style receivers, subject and body apart for everything else.
PAYLOAD = {"subject": "{{subject}}", "body": "{{body}}", "text": "{{subject}}\n{{body}}"}

_FAILED_BODY = """\
Flow run {{ flow_run.name }} of {{ flow.name }}{% if deployment %} (deployment \
{{ deployment.name }}){% endif %} ended {{ flow_run.state.name }}: {{ flow_run.state.message }}
{% if flow_run.parameters.data_uri %}Data: {{ flow_run.parameters.data_uri }}{% endif %}{% set link = flow_run|ui_url %}
{% if link %}{{ link }}{% else %}No link to the run: the Prefect server does not know its UI address (set PREFECT_UI_URL where the server runs).{% endif %}"""
_PROMOTED_BODY = """\
{% set p = event.payload %}{{ event.resource.id | replace('skin.model.', '') }} \
v{{ event.resource['skin.version'] }} is the new champion (score {{ p.score }}), replacing \
{% if p.previous_champion %}v{{ p.previous_champion }} ({{ p.champion_score }}){% else %}\
no earlier champion{% endif %}.
{{ p.reason }}
MLflow run {{ p.run_id }}{% if p.url %}: {{ p.url }}{% endif %}"""
_DRIFTED_BODY = """\
Dataset {{ event.resource['skin.data_uri'] }} differs from the data the champion was trained on.
{% for key, value in event.payload.items() %}{{ key }}: {{ value }}
{% endfor %}"""


@dataclass(frozen=True)
class Notifications:
    """What `deploy_notifications` left on the server."""

    block_id: UUID
    automations: dict[str, UUID]  # by name

    def to_dict(self) -> dict[str, Any]:
        return {"block": BLOCK_NAME, "block_id": str(self.block_id),
                "automations": {k: str(v) for k, v in self.automations.items()}}  # fmt: skip


def webhook_block(url: str) -> CustomWebhookNotificationBlock:
    """A JSON POST to `url`; the URL (which often holds a token) lives in the block's secrets."""
    if not url.startswith(("http://", "https://")):
        shown = f"{url[:8]}…" if len(url) > 8 else url  # a URL often carries its token
        raise ValueError(
            f"webhook URL must be http(s)://…, not {shown!r} (--webhook or ${URL_ENV})"
        )
    return CustomWebhookNotificationBlock(
        name="skin", url="{{url}}", json_data=PAYLOAD, secrets={"url": url}
    )


def _trigger(event: str | tuple[str, ...], resource: str, flow: str | None = None) -> EventTrigger:
    """Fire once per matching event, at once; `flow` narrows it to runs of flows of that name."""
    expect = {event} if isinstance(event, str) else set(event)
    related = [{"prefect.resource.role": "flow", "prefect.resource.name": flow}] if flow else []
    return EventTrigger(match={"prefect.resource.id": resource}, match_related=related,
                        expect=expect, posture=Posture.Reactive, threshold=1)  # fmt: skip


def automations(block_id: UUID) -> list[AutomationCore]:
    """The notification automations, all posting through the block `block_id`."""

    def notify(subject: str, body: str) -> list[SendNotification]:
        return [SendNotification(block_document_id=block_id, subject=subject, body=body)]

    failed = tuple(f"prefect.flow-run.{state}" for state in FAILED_STATES)
    return [
        AutomationCore(
            name=RUN_FAILED,
            description="A run of any skin-* flow ended Failed, Crashed or TimedOut.",
            trigger=_trigger(failed, "prefect.flow-run.*", flow="skin-*"),
            actions=notify(
                "skin: {{ flow.name }} run {{ flow_run.name }} {{ flow_run.state.name }}",
                _FAILED_BODY,
            ),
        ),
        AutomationCore(
            name=PROMOTED,
            description="The registry gate made a new version champion.",
            trigger=_trigger(MODEL_PROMOTED, "skin.model.*"),
            actions=notify(
                "skin: {{ event.resource.id | replace('skin.model.', '') }}"
                " v{{ event.resource['skin.version'] }} is champion",
                _PROMOTED_BODY,
            ),
        ),
        AutomationCore(
            name=DRIFTED,
            description="The drift check found the data moved away from the champion's.",
            trigger=_trigger(DRIFT_DETECTED, "skin.dataset.*"),
            actions=notify("skin: drift in {{ event.resource['skin.data_uri'] }}", _DRIFTED_BODY),
        ),
        AutomationCore(
            name=TEST,
            description="`skin notify test`: checks that the server reaches the webhook.",
            trigger=_trigger(NOTIFY_TEST, "skin.notify.*"),
            actions=notify("skin: test notification", "{{ event.payload.message }}"),
        ),
    ]


def _require_server() -> None:
    """Automations live on a server: a temporary API would forget them at exit."""
    if not get_current_settings().api.url:
        raise RuntimeError(
            "PREFECT_API_URL is not set: notifications are set up on a Prefect server, e.g."
            " export PREFECT_API_URL=http://127.0.0.1:4200/api"
        )


def _upsert(client: Any, automation: AutomationCore) -> UUID:
    """Update the automation of that name (deleting duplicates), or create it."""
    existing = client.read_automations_by_name(automation.name)
    if not existing:
        return client.create_automation(automation)
    keep, *duplicates = existing
    client.update_automation(keep.id, automation)
    for extra in duplicates:
        client.delete_automation(extra.id)
    return keep.id


def deploy_notifications(url: str) -> Notifications:
    """Save the webhook block for `url` and create or update every notification automation."""
    _require_server()
    block_id = webhook_block(url).save(BLOCK_NAME, overwrite=True)
    with get_client(sync_client=True) as client:
        ids = {a.name: _upsert(client, a) for a in automations(block_id)}
    return Notifications(block_id, ids)


def send_test(message: str) -> None:
    """Emit `skin.notify.test`: the server's automation posts `message` to the webhook."""
    from tasks.events import emit

    _require_server()
    emit(NOTIFY_TEST, {"prefect.resource.id": "skin.notify.test"}, {"message": message})
    # Sent before the command ends: at exit Prefect would report it "Still processing items".
    EventsWorker.instance().wait_until_empty()
