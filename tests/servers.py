"""Real local servers for tests: start by PID, wait until healthy, always stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A server process we own: its URL, its process and its log file."""

    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)

    def tail(self, n: int = 40) -> str:
        lines = self.log.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])


def start(
    cmd: list[str],
    url: str,
    health: str,
    log: Path,
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> Server:
    """Start `cmd` in its own process group and poll `url + health` until it answers 200."""
    fh = log.open("wb")
    proc = subprocess.Popen(
        cmd,
        stdout=fh,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    server = Server(url, proc, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}:\n{server.tail()}")
        try:
            with urllib.request.urlopen(url + health, timeout=2) as resp:
                if resp.status == 200:
                    return server
        except OSError:
            pass
        time.sleep(0.25)
    server.stop()
    raise RuntimeError(f"{cmd[0]} not healthy after {timeout}s:\n{server.tail()}")


def start_moto(log_dir: Path) -> Server:
    port = free_port()
    return start(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        f"http://127.0.0.1:{port}",
        "/moto-api/",
        log_dir / "moto.log",
    )


def start_mlflow(log_dir: Path, port: int | None = None) -> Server:
    """An MLflow server whose state lives in `log_dir` (restartable on the same port)."""
    port = port or free_port()
    db = log_dir / "mlflow.db"
    return start(
        [
            str(BIN / "mlflow"),
            "server",
            "--workers",
            "1",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{db}",
            "--artifacts-destination",
            str(log_dir / "mlartifacts"),
        ],
        f"http://127.0.0.1:{port}",
        "/health",
        log_dir / f"mlflow-{time.time_ns()}.log",
        env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        timeout=120,
    )


def start_prefect(log_dir: Path) -> Server:
    """A real `prefect server` with its own home and SQLite database (for subprocess runs)."""
    port = free_port()
    home = log_dir / "prefect-home"
    return start(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        f"http://127.0.0.1:{port}",
        "/api/health",
        log_dir / "prefect-server.log",
        env={
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db",
        },
        timeout=120,
    )
