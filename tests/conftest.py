"""Shared fixtures: real servers once per session, fresh buckets and data per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from tests import servers

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MPLBACKEND", "Agg")


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
