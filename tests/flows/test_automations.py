"""Notification automations as declared: what each one listens to, its templates, idempotent
upserts by name, and the promotion event `register_task` emits (no server needed here;
tests/e2e/test_notifications.py runs them on a real one)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from prefect.events import Event, RelatedResource, Resource

from flows import automations as au
from skin.release.registry import CHALLENGER, CHAMPION, Registration
from tasks import events

BLOCK = uuid.uuid4()


def _declared() -> dict[str, Any]:
    return {a.name: a for a in au.automations(BLOCK)}


def _fires(automation: Any, event: Event) -> bool:
    """The trigger's own match rules (the server applies the same ones)."""
    trigger = automation.trigger
    return (
        event.event in trigger.expect
        and trigger.match.matches(event.resource)
        and all(spec.includes(event.related) for spec in trigger.match_related)
    )


def _run_event(state: str, flow_name: str) -> Event:
    """A flow-run state event shaped like the ones Prefect's server emits."""
    run_id = uuid.uuid4()
    return Event(
        event=f"prefect.flow-run.{state}",
        resource=Resource(
            {
                "prefect.resource.id": f"prefect.flow-run.{run_id}",
                "prefect.resource.name": "brave-otter",
            }
        ),
        related=[
            RelatedResource(
                {
                    "prefect.resource.id": f"prefect.flow.{uuid.uuid4()}",
                    "prefect.resource.role": "flow",
                    "prefect.resource.name": flow_name,
                }
            )
        ],
    )


def test_every_automation_notifies_through_the_block_once() -> None:
    declared = au.automations(BLOCK)
    assert len({a.name for a in declared}) == len(declared), "automation names must be unique"
    for a in declared:
        assert [x.block_document_id for x in a.actions] == [BLOCK], f"{a.name}: {a.actions}"


@pytest.mark.parametrize("state", ["Failed", "Crashed", "TimedOut"])
def test_a_skin_run_ending_badly_fires_the_failure_automation(state: str) -> None:
    assert _fires(_declared()[au.RUN_FAILED], _run_event(state, "skin-pipeline"))


@pytest.mark.parametrize(
    ("state", "flow_name"), [("Completed", "skin-train"), ("Failed", "someone-elses-flow")]
)
def test_completed_runs_and_other_flows_do_not_fire(state: str, flow_name: str) -> None:
    assert not _fires(_declared()[au.RUN_FAILED], _run_event(state, flow_name))


def test_promotion_and_drift_events_fire_their_own_automation_only() -> None:
    declared = _declared()
    promoted = Event(event=events.MODEL_PROMOTED, resource=events.model_resource("m", "3"))
    drifted = Event(event=events.DRIFT_DETECTED, resource=events.dataset_resource("s3://b/d"))
    fired = {name for name, a in declared.items() if _fires(a, promoted)}
    assert fired == {au.PROMOTED}, f"a promotion fired {fired}"
    fired = {name for name, a in declared.items() if _fires(a, drifted)}
    assert fired == {au.DRIFTED}, f"a drift event fired {fired}"


def test_templates_are_valid_for_the_server() -> None:
    from prefect.server.events.actions import SendNotification as ServerSendNotification

    for a in au.automations(BLOCK):
        for action in a.actions:
            ServerSendNotification.model_validate(action.model_dump())  # raises on bad Jinja


def test_the_webhook_url_must_be_http_and_is_kept_secret() -> None:
    with pytest.raises(ValueError, match="SKIN_WEBHOOK_URL"):
        au.webhook_block("hooks.example.com/abc")
    block = au.webhook_block("https://hooks.example.com/T0/secret-token")
    assert "secret-token" not in block.url, f"URL in a plain field: {block.url}"


class FakeClient:
    """The four automation calls `_upsert` makes, recorded."""

    def __init__(self, existing: list[Any]) -> None:
        self.existing, self.calls = existing, []

    def read_automations_by_name(self, name: str) -> list[Any]:
        return [a for a in self.existing if a.name == name]

    def create_automation(self, automation: Any) -> uuid.UUID:
        self.calls.append(("create", automation.name))
        return uuid.uuid4()

    def update_automation(self, automation_id: uuid.UUID, automation: Any) -> None:
        self.calls.append(("update", automation_id))

    def delete_automation(self, automation_id: uuid.UUID) -> None:
        self.calls.append(("delete", automation_id))


def _stored(name: str) -> Any:
    return type("Stored", (), {"name": name, "id": uuid.uuid4()})()


def test_upsert_creates_a_missing_automation() -> None:
    client = FakeClient([_stored("unrelated")])
    au._upsert(client, _declared()[au.DRIFTED])
    assert client.calls == [("create", au.DRIFTED)]


def test_upsert_updates_by_name_and_removes_duplicates() -> None:
    first, second = _stored(au.DRIFTED), _stored(au.DRIFTED)
    client = FakeClient([first, second])
    assert au._upsert(client, _declared()[au.DRIFTED]) == first.id
    assert client.calls == [("update", first.id), ("delete", second.id)]


def test_setup_refuses_without_a_server() -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        temporary_settings(restore_defaults={PREFECT_API_URL}),
        pytest.raises(RuntimeError, match="PREFECT_API_URL"),
    ):
        au.deploy_notifications("https://hooks.example.com/x")


def _registration(alias: str) -> Registration:
    return Registration("skin-lesion-classifier", "4", alias, 0.8, 0.7, "3", "beats v3")


def test_a_new_champion_emits_the_promotion(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(events, "emit_event", lambda **kw: sent.append(kw))
    assert events.emit_promotion(_registration(CHAMPION), "run1", "http://mlflow:5000/")
    assert len(sent) == 1, sent
    assert sent[0]["event"] == events.MODEL_PROMOTED
    assert sent[0]["resource"] == events.model_resource("skin-lesion-classifier", "4")
    payload = sent[0]["payload"]
    assert (payload["previous_champion"], payload["champion_score"], payload["run_id"]) == (
        "3", 0.7, "run1"), payload  # fmt: skip
    assert payload["url"] == "http://mlflow:5000/#/models/skin-lesion-classifier/versions/4"


def test_a_challenger_emits_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(events, "emit_event", lambda **kw: sent.append(kw))
    assert not events.emit_promotion(_registration(CHALLENGER), "run1", "sqlite:///m.db")
    assert sent == []


def test_no_link_without_a_tracking_server() -> None:
    payload = events.promotion_payload(_registration(CHAMPION), "run1", "sqlite:///m.db")
    assert "url" not in payload, payload


def test_the_promotion_link_never_carries_the_tracking_credentials() -> None:
    uri = "https://alice:s3cret@mlflow.example.org:8443/prefix/"
    payload = events.promotion_payload(_registration(CHAMPION), "run1", uri)
    assert payload["url"].startswith("https://mlflow.example.org:8443/prefix/#/models/"), payload
    assert "s3cret" not in str(payload) and "alice" not in str(payload), payload


def test_a_bad_webhook_url_is_refused_without_echoing_its_token() -> None:
    with pytest.raises(ValueError, match="http") as err:
        au.webhook_block("hooks.slack.com/services/T0/B0/tok3n-secret")
    assert "tok3n-secret" not in str(err.value), err.value


@pytest.mark.parametrize(("alias", "posts"), [(CHAMPION, 1), (CHALLENGER, 0)])
def test_register_task_announces_only_a_new_champion(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, alias: str, posts: int
) -> None:
    from skin.base.config import PipelineConfig
    from tasks import training

    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(events, "emit_event", lambda **kw: sent.append(kw))
    monkeypatch.setattr(training, "dev_comparison", lambda *a, **kw: None)
    monkeypatch.setattr(training, "register_and_gate", lambda *a, **kw: _registration(alias))
    config = PipelineConfig(work_dir=str(tmp_path))
    reg = training.register_task.fn("run1", "models:/m-1", config)
    assert reg.alias == alias
    assert [s["resource"]["skin.version"] for s in sent] == ["4"] * posts, sent


def _render(name: str, event: Event) -> tuple[str, str]:
    """Subject and body as the server renders them for `event` (no flow-run objects needed)."""
    from prefect.server.events.schemas.events import Event as ServerEvent
    from prefect.server.utilities.user_templates import render_user_template_sync

    context = {"event": ServerEvent.model_validate(event.model_dump())}
    (action,) = _declared()[name].actions
    return (
        render_user_template_sync(action.subject, context),
        render_user_template_sync(action.body, context),
    )


def test_a_promotion_with_a_bare_payload_still_names_the_version() -> None:
    event = Event(event=events.MODEL_PROMOTED, resource=events.model_resource("skin-clf", "9"))
    subject, body = _render(au.PROMOTED, event)
    assert subject == "skin: skin-clf v9 is champion", subject
    assert "no earlier champion" in body, body


def test_a_drift_post_lists_whatever_evidence_the_event_carries() -> None:
    event = Event(event=events.DRIFT_DETECTED, resource=events.dataset_resource("s3://b/new"),
                  payload={"mmd_p": 0.01, "drifted": ["brightness"]})  # fmt: skip
    subject, body = _render(au.DRIFTED, event)
    assert subject == "skin: drift in s3://b/new", subject
    assert "mmd_p: 0.01" in body and "drifted: ['brightness']" in body, body


def _render_failed(ui_url: str | None) -> str:
    """The failure post's body for a failed run, with the server's PREFECT_UI_URL set or not."""
    from prefect.server.events.actions import SendNotification as ServerSendNotification  # noqa: F401 (registers the filters)
    from prefect.server.schemas.core import Flow, FlowRun
    from prefect.server.schemas.states import Failed
    from prefect.server.utilities.user_templates import render_user_template_sync
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

    flow = Flow(name="skin-pipeline")
    run = FlowRun(name="brave-otter", flow_id=flow.id, state=Failed(message="boom"),
                  parameters={"data_uri": "s3://b/d"})  # fmt: skip
    (action,) = _declared()[au.RUN_FAILED].actions
    # Without a UI URL Prefect derives one from the API URL: a server started without either
    # (the usual `prefect server start`) knows neither.
    with temporary_settings(updates={PREFECT_UI_URL: ui_url, PREFECT_API_URL: None}):
        return render_user_template_sync(action.body, {"flow_run": run, "flow": flow})


def test_a_failure_post_links_the_run_or_says_why_it_cannot() -> None:
    linked = _render_failed("http://prefect.test:4200")
    assert "http://prefect.test:4200/runs/flow-run/" in linked and "No link" not in linked, linked
    bare = _render_failed(None)
    assert "brave-otter" in bare and "boom" in bare and "s3://b/d" in bare, bare
    assert "No link to the run" in bare and "PREFECT_UI_URL" in bare, bare
