"""The local Prefect server (flows/server.py): recorded once, reused while it answers, never
forced on a command that names its own PREFECT_API_URL."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from flows import server as srv
from tests.servers import free_port


class Health(BaseHTTPRequestHandler):
    """Answers Prefect's health check, and nothing else."""

    def do_GET(self) -> None:
        ok = self.path == "/api/health"
        self.send_response(200 if ok else 404)
        self.end_headers()
        self.wfile.write(b"true" if ok else b"")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def api() -> Iterator[str]:
    """A stand-in API on loopback that answers /api/health."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/api"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    monkeypatch.setenv("PREFECT_API_URL", "unset after the test")  # restored: what code sets too
    monkeypatch.delenv("PREFECT_API_URL")
    return tmp_path


def record(home: Path, url: str, pid: int) -> None:
    (home / srv.RECORD).write_text(json.dumps({"api_url": url, "pid": pid}))


def test_a_recorded_server_that_answers_is_used(home: Path, api: str) -> None:
    record(home, api, os.getpid())
    assert srv.use_running_server() == api
    assert os.environ["PREFECT_API_URL"] == api, "set before Prefect reads its settings"


def test_prefect_api_url_given_wins_over_the_record(
    home: Path, api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    record(home, api, os.getpid())
    monkeypatch.setenv("PREFECT_API_URL", "http://elsewhere:4200/api")
    assert srv.use_running_server() == "http://elsewhere:4200/api"
    assert os.environ["PREFECT_API_URL"] == "http://elsewhere:4200/api"


@pytest.mark.parametrize("why", ["nothing listens", "process gone", "no record", "garbled"])
def test_no_usable_server_leaves_prefect_to_start_its_temporary_one(
    home: Path, api: str, why: str
) -> None:
    if why == "nothing listens":
        record(home, f"http://127.0.0.1:{free_port()}/api", os.getpid())
    elif why == "process gone":
        record(home, api, 2**22 + 12345)  # past the kernel's pid range
    elif why == "garbled":
        (home / srv.RECORD).write_text("{not json")
    assert srv.use_running_server() is None
    assert "PREFECT_API_URL" not in os.environ


def test_stop_without_a_record_says_so(home: Path) -> None:
    assert srv.stop_server() is None


@pytest.mark.slow
@pytest.mark.server
def test_start_records_a_real_server_reuses_it_and_stop_ends_it(home: Path) -> None:
    port = free_port()
    first = srv.start_server(port=port, timeout=180)
    try:
        assert srv.healthy(first.api_url)
        assert srv.start_server(port=port) == first, "a second start reuses the running one"
        assert srv.use_running_server() == first.api_url
    finally:
        stopped = srv.stop_server()
    assert stopped == first
    assert not srv.healthy(first.api_url, timeout=0.5)
    assert srv.running_server() is None and not (home / srv.RECORD).exists()
