"""A local Prefect server started once and reused by every later command (no temporary server).

Without PREFECT_API_URL each flow run starts Prefect's temporary API server in a subprocess and
stops it at exit: seconds on every command. `skin server start` runs `prefect server start` on
loopback, detached, with this project's settings, and records its API URL and process id in
`$PREFECT_HOME/skin-server.json`; a later command in the same PREFECT_HOME finds it there and,
while it answers its health check, points PREFECT_API_URL at it before Prefect is imported.
No Prefect import here: the CLI calls this before any flow is loaded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
PORT = 4200  # Prefect's own default
RECORD = "skin-server.json"
LOG = "skin-server.log"
# The project's server settings: no telemetry (it can trip over the local SQLite database).
SETTINGS = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


class ServerError(RuntimeError):
    """The local Prefect server did not start, or cannot be stopped; says why."""


@dataclass(frozen=True)
class Server:
    """A local server this project started: where its API answers, and its Prefect home."""

    api_url: str
    home: str
    pid: int


def prefect_home() -> Path:
    """PREFECT_HOME as Prefect reads it (default ~/.prefect), without importing Prefect."""
    return Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()


def record_path() -> Path:
    return prefect_home() / RECORD


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    """Whether a Prefect API answers its health check at `api_url` (…/api)."""
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as reply:
            return reply.status == 200
    except (OSError, urllib.error.URLError, ValueError):
        return False


def _recorded() -> Server | None:
    """The server recorded for this PREFECT_HOME, whether or not it still runs."""
    try:
        record = json.loads(record_path().read_text())
        return Server(str(record["api_url"]), str(prefect_home()), int(record["pid"]))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def running_server() -> Server | None:
    """The server `skin server start` left for this PREFECT_HOME, if it runs and answers."""
    server = _recorded()
    if server is None or not _alive(server.pid) or not healthy(server.api_url):
        return None
    return server


def use_running_server() -> str | None:
    """Point this process at the recorded local server, unless PREFECT_API_URL already names a
    server (that one wins); None: Prefect starts its temporary server as before. Call it
    before Prefect is imported: Prefect reads its settings once, at import."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    server = running_server()
    if server is None:
        return None
    os.environ["PREFECT_API_URL"] = server.api_url
    return server.api_url


def start_server(host: str = HOST, port: int = PORT, timeout: float = 120.0) -> Server:
    """`prefect server start` on `host:port` as a detached process logging to
    `$PREFECT_HOME/skin-server.log`, healthy, then recorded; one already recorded and answering
    is returned as it is. (Not `--background`: Prefect pipes that server's output and never
    reads it, so its access log fills the pipe and the server stalls.)"""
    if (found := running_server()) is not None:
        return found
    home = prefect_home()
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **SETTINGS}
    env.pop("PREFECT_API_URL", None)  # the server serves; it is not a client of another one
    cmd = [str(Path(sys.executable).parent / "prefect"), "server", "start"]
    with (home / LOG).open("ab") as log:
        proc = subprocess.Popen(
            [*cmd, "--host", host, "--port", str(port)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives this command, and its Ctrl-C
        )
    url = f"http://{host}:{port}/api"
    deadline = time.monotonic() + timeout
    while not healthy(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            tail = (home / LOG).read_text(errors="replace").strip().splitlines()[-3:]
            raise ServerError(f"the Prefect server at {url} did not start: {' | '.join(tail)}")
        time.sleep(0.2)
    record_path().write_text(json.dumps({"api_url": url, "pid": proc.pid}) + "\n")
    return Server(url, str(home), proc.pid)


def stop_server(timeout: float = 30.0) -> Server | None:
    """Stop the recorded server (SIGTERM, then wait for it to exit) and forget it; None when
    none was recorded."""
    server = _recorded()
    record_path().unlink(missing_ok=True)
    if server is None:
        return None
    try:
        os.kill(server.pid, signal.SIGTERM)
    except ProcessLookupError:
        return server
    deadline = time.monotonic() + timeout
    while _alive(server.pid):
        if time.monotonic() > deadline:
            raise ServerError(f"the Prefect server (pid {server.pid}) did not stop in {timeout} s")
        time.sleep(0.2)
    return server


def _alive(pid: int) -> bool:
    try:  # this process's own child (it started the server): reap it once it has exited
        if os.waitpid(pid, os.WNOHANG)[0]:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process took the pid
        return False
    return True
