"""Shared fixtures: real servers once per session, fresh buckets and data per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from tests import servers
from tests.recipes import TINY

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub here: fail at once instead of retrying
_PREFECT_HOME = Path(os.environ.get("SKIN_TEST_PREFECT_HOME", "/tmp/skin-tests-prefect"))
os.environ["PREFECT_HOME"] = str(_PREFECT_HOME / uuid.uuid4().hex[:8])



@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.Server]:
    """moto_server on loopback; boto3 reaches it through the standard env chain."""
    server = servers.start_moto(tmp_path_factory.mktemp("moto"))
    saved = {
        k: os.environ.get(k)
        for k in (
            "AWS_ENDPOINT_URL",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_DEFAULT_REGION",
        )
    }
    os.environ.update(
        AWS_ENDPOINT_URL=server.url,
        AWS_ACCESS_KEY_ID="testing-key-id",
        AWS_SECRET_ACCESS_KEY="testing-secret",
        AWS_DEFAULT_REGION="us-east-1",
    )
    yield server
    server.stop()
    for key, val in saved.items():
        if val is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = val


@pytest.fixture
def s3_client(moto: servers.Server):
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=moto.url, config=Config(max_pool_connections=32))


@pytest.fixture
def bucket(s3_client) -> str:
    """A fresh, uniquely named bucket per test."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    return name


def snapshot(s3_client, bucket: str) -> dict[str, tuple[str, int]]:
    """Every object's ETag and size: compared before and after a run (nothing lost or changed)."""
    out: dict[str, tuple[str, int]] = {}
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = (obj["ETag"], obj["Size"])
    return out


def local_snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, hash(p.read_bytes()))
        for p in root.rglob("*")
        if p.is_file()
    }


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
    from skin.sample_data import write_sample_dataset
    from skin.synthetic import class_counts

    root = tmp_path_factory.mktemp("sample") / "data"
    write_sample_dataset(str(root), class_counts(per_class=40), size=40, seed=1)
    return root


def tiny_config(tmp_path: Path, data: Path | str, **extra: object):
    from skin.config import load_config

    return load_config(None, {**TINY, "data.uri": str(data), "work_dir": str(tmp_path / "work"),
                              **extra})
