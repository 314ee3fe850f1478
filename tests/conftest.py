"""Shared fixtures: the test environment, real servers once per session, fresh buckets per test.

Plain helpers live in `tests/helpers.py`; nothing here runs at import time.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import servers

# Defaults for every test and every process a test starts (a value already set is kept).
ENV_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MPLBACKEND": "Agg",
    "HF_HUB_OFFLINE": "1",  # no hub here: fail at once instead of retrying
}
# Fixtures that start a real server: a test that uses one must be marked `server`.
SERVER_FIXTURES = frozenset({"moto", "prefect_api", "prefect_server", "mlflow_server"})


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist each worker gets one core's worth of threads (two workers on two cores
    would otherwise fight over four BLAS/OpenMP threads); processes the tests start inherit it."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        os.environ.setdefault("MKL_NUM_THREADS", "1")
        if torch := sys.modules.get("torch"):
            torch.set_num_threads(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Refuse a test that starts a server without the `server` marker (`-m` must be honest)."""
    unmarked = [
        item.nodeid
        for item in items
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ()))
        and item.get_closest_marker("server") is None
    ]
    if unmarked:
        raise pytest.UsageError(
            "these tests start a server but are not marked @pytest.mark.server:\n  "
            + "\n  ".join(unmarked)
        )


@pytest.fixture(scope="session", autouse=True)
def test_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Offline hub, headless plots, no analytics and a fresh Prefect home; restored afterwards."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in ENV_DEFAULTS.items():
            if key not in os.environ:
                mp.setenv(key, value)
        if hub := sys.modules.get("huggingface_hub.constants"):  # it read the variable on import
            offline = os.environ["HF_HUB_OFFLINE"].upper() in {"1", "ON", "YES", "TRUE"}
            mp.setattr(hub, "HF_HUB_OFFLINE", offline)
        mp.setenv("PREFECT_HOME", str(tmp_path_factory.mktemp("prefect-home")))
        _refresh_prefect_settings()
        yield
    _refresh_prefect_settings()


def _refresh_prefect_settings() -> None:
    """Prefect reads its settings when imported: re-read them if it already is."""
    if context := sys.modules.get("prefect.context"):
        context.refresh_global_settings_context()


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.Server]:
    """moto_server on loopback; boto3 reaches it through the standard env chain."""
    server = servers.start_moto(tmp_path_factory.mktemp("moto"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ENDPOINT_URL", server.url)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing-key-id")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def s3_client(moto: servers.Server) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=moto.url, config=Config(max_pool_connections=32))


@pytest.fixture
def bucket(s3_client: Any) -> str:
    """A fresh, uniquely named bucket per test."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """One ephemeral Prefect API for the whole session (starting one costs ~10 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.Server]:
    """A real Prefect server shared by tests that run `skin` in subprocesses (no per-process
    temporary API to start)."""
    server = servers.start_prefect(tmp_path_factory.mktemp("prefect"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.Server]:
    """A real `mlflow server` on loopback with a SQLite backend, shared by the session."""
    server = servers.start_mlflow(tmp_path_factory.mktemp("mlflow"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 generated images per class at 40 px, in class folders (read-only for tests)."""
    from skin.data.sample_data import write_sample_dataset
    from skin.data.synthetic import class_counts

    root = tmp_path_factory.mktemp("sample") / "data"
    write_sample_dataset(str(root), class_counts(per_class=40), size=40, seed=1)
    return root
