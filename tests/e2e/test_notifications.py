"""Notifications end to end: a real Prefect server, `skin notify setup` pointed at a local HTTP
receiver, then a promotion event, a drift event and a failing `skin-*` flow: one post each.

A failing flow of another project (not `skin-*`) must not post; `skin notify test` goes last as
a barrier, so that a late or duplicate post would be in the receiver when the counts are read.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prefect import flow

from flows.automations import BLOCK_NAME, DRIFTED, PROMOTED, RUN_FAILED, TEST
from tasks.events import DRIFT_DETECTED, MODEL_PROMOTED, dataset_resource, model_resource
from tests import servers

pytestmark = [pytest.mark.slow, pytest.mark.server, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
PREFECT, SKIN = str(servers.BIN / "prefect"), str(servers.BIN / "skin")
POST_TIMEOUT = 60.0
MODEL, VERSION = "skin-lesion-classifier", "7"
DATA_URI = "s3://skin-data/isic2019-clinic-b"


@flow(name="skin-notify-check")
def failing_skin_flow() -> None:
    raise RuntimeError("deliberate failure for the notification test")


@flow(name="other-project-flow")
def failing_other_flow() -> None:
    raise RuntimeError("not ours: must not notify")


def run_failing_flows() -> dict[str, str]:
    """Both flows, in a process of their own (no Prefect services left behind in pytest's)."""
    other = failing_other_flow(return_state=True)
    skin = failing_skin_flow(return_state=True)
    return {"other": str(other.state_details.flow_run_id),
            "skin": str(skin.state_details.flow_run_id)}  # fmt: skip


class Receiver(ThreadingHTTPServer):
    """A webhook on 127.0.0.1 that keeps every JSON body posted to it."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.posts: queue.Queue[dict[str, Any]] = queue.Queue()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.posts.put(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@dataclass
class Setup:
    server: servers.Server
    receiver: Receiver
    env: dict[str, str]
    client: Any  # a sync Prefect client on the server

    def cli(self, *args: str, stderr: bool = False) -> str:
        """stdout of a command that must succeed (and its stderr after it, with `stderr`)."""
        out = subprocess.run(args, cwd=REPO, env=self.env, capture_output=True, text=True,
                             timeout=120, check=False)  # fmt: skip
        assert out.returncode == 0, (
            f"{' '.join(args)} exited {out.returncode}:\n{out.stdout}{out.stderr}"
        )
        return out.stdout + (out.stderr if stderr else "")

    def wait_for(self, subject_part: str, got: list[dict[str, Any]]) -> dict[str, Any]:
        """Collect posts into `got` until one whose subject holds `subject_part` arrives."""
        deadline = time.monotonic() + POST_TIMEOUT
        while time.monotonic() < deadline:
            try:
                post = self.receiver.posts.get(timeout=1)
            except queue.Empty:
                continue
            got.append(post)
            if subject_part in post.get("subject", ""):
                return post
        pytest.fail(f"no post with {subject_part!r} in {POST_TIMEOUT}s; got {got}\n"
                    f"{self.server.tail(30)}")  # fmt: skip


def _prefect_server(tmp: Path) -> servers.Server:
    """`prefect server` with its own home and database, knowing its UI URL (for links)."""
    port, home = servers.free_port(), tmp / "prefect-home"
    url = f"http://127.0.0.1:{port}"
    return servers.start(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        url,
        "/api/health",
        tmp / "prefect-server.log",
        env={"PREFECT_HOME": str(home), "PREFECT_UI_URL": url,
             "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
             "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db"},
        timeout=120,
    )  # fmt: skip


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """Receiver, a Prefect server of our own, `skin notify setup` run twice (idempotent)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    receiver = Receiver()
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    server = _prefect_server(tmp_path_factory.mktemp("notify"))
    api = f"{server.url}/api"
    env = {**os.environ, "PREFECT_API_URL": api}
    env.pop("SKIN_WEBHOOK_URL", None)
    try:
        with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as c:
            s = Setup(server, receiver, env, c)
            s.cli(SKIN, "notify", "setup", "--webhook", receiver.url)
            s.cli(SKIN, "notify", "setup", "--webhook", receiver.url)
            yield s
    finally:
        server.stop()
        receiver.shutdown()
        receiver.server_close()


def test_setup_twice_leaves_one_block_and_one_automation_each(setup: Setup) -> None:
    names = [a.name for a in setup.client.read_automations()]
    expected = [RUN_FAILED, PROMOTED, DRIFTED, TEST]
    assert sorted(names) == sorted(expected), f"automations after two setups: {names}"
    blocks = [b.name for b in setup.client.read_block_documents() if b.name == BLOCK_NAME]
    assert blocks == [BLOCK_NAME], f"webhook blocks: {blocks}"


def test_the_webhook_url_is_a_secret_of_the_block(setup: Setup) -> None:
    block = setup.client.read_block_document_by_name(
        BLOCK_NAME, "custom-webhook", include_secrets=False
    )
    assert setup.receiver.url not in json.dumps(block.data, default=str), (
        f"webhook URL readable without include_secrets: {block.data}"
    )


@dataclass
class Posts:
    promoted: dict[str, Any]
    drifted: dict[str, Any]
    failed: dict[str, Any]
    flow_run: Any  # the failed skin-* run
    all: list[dict[str, Any]]
    notify_test: str  # what `skin notify test` printed (stdout and stderr)


@pytest.fixture(scope="module")
def posts(setup: Setup) -> Posts:
    """A promotion, a drift event, a failing skin-* flow and a failing foreign flow; then the
    test notification as the last post."""
    got: list[dict[str, Any]] = []
    payload = {"name": MODEL, "version": VERSION, "score": 0.81, "champion_score": 0.78,
               "previous_champion": "6", "reason": "beats v6", "run_id": "abc123",
               "url": f"http://mlflow.test/#/models/{MODEL}/versions/{VERSION}"}  # fmt: skip
    resource = model_resource(MODEL, VERSION)
    setup.cli(PREFECT, "event", "emit", MODEL_PROMOTED, "--resource", json.dumps(resource),
              "--payload", json.dumps(payload))  # fmt: skip
    promoted = setup.wait_for("is champion", got)
    drift = {"class_mix_p": 0.001, "embedding_p": 0.02}
    setup.cli(PREFECT, "event", "emit", DRIFT_DETECTED, "--resource",
              json.dumps(dataset_resource(DATA_URI)), "--payload", json.dumps(drift))  # fmt: skip
    drifted = setup.wait_for("drift in", got)
    ran = setup.cli(sys.executable, "-m", "tests.e2e.test_notifications")
    ids = json.loads([line for line in ran.splitlines() if line.startswith("{")][-1])
    flow_run = setup.client.read_flow_run(ids["skin"])
    assert flow_run.state is not None and flow_run.state.is_failed(), f"should fail: {flow_run}"
    failed = setup.wait_for(flow_run.name, got)
    marker = f"barrier {uuid.uuid4().hex[:8]}"
    said = setup.cli(SKIN, "notify", "test", "--message", marker, stderr=True)
    setup.wait_for("test notification", got)
    return Posts(promoted, drifted, failed, flow_run, got, said)


def test_each_event_posts_exactly_once(posts: Posts) -> None:
    subjects = [p.get("subject", "") for p in posts.all]
    assert len(subjects) == 4, f"expected promoted, drift, failed, test; got {subjects}"
    assert not any("other-project-flow" in s for s in subjects), f"foreign flow posted: {subjects}"


def test_notify_test_says_it_was_sent_and_nothing_that_makes_a_user_doubt(posts: Posts) -> None:
    assert "test event sent" in posts.notify_test, posts.notify_test
    assert "Still processing items" not in posts.notify_test, posts.notify_test


def test_promotion_post_names_the_model_version_and_scores(posts: Posts) -> None:
    post = posts.promoted
    assert f"{MODEL} v{VERSION} is champion" in post["subject"], post
    for part in ("0.81", "v6", "0.78", "abc123", "beats v6", f"/versions/{VERSION}"):
        assert part in post["body"], f"{part!r} missing from the promotion post: {post['body']}"
    assert post["text"].startswith(post["subject"]), f"text is subject + body: {post}"


def test_drift_post_names_the_dataset_and_the_evidence(posts: Posts) -> None:
    post = posts.drifted
    assert DATA_URI in post["subject"] and DATA_URI in post["body"], post
    assert "class_mix_p: 0.001" in post["body"], f"drift evidence missing: {post['body']}"


def test_failure_post_names_the_flow_run_and_its_state(posts: Posts) -> None:
    post, run = posts.failed, posts.flow_run
    assert "skin-notify-check" in post["subject"] and run.name in post["subject"], post
    assert "Failed" in post["subject"], post
    assert "deliberate failure" in post["body"], f"state message missing: {post['body']}"
    assert f"/runs/flow-run/{run.id}" in post["body"], f"no link to the run: {post['body']}"


if __name__ == "__main__":  # the failing runs, against $PREFECT_API_URL; ids on the last line
    print(json.dumps(run_failing_flows()))
