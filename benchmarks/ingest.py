"""ingest: ISIC-sized objects from moto_server behind 50 ms per request: serial loop vs Fetcher."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3

from benchmarks.common import Context, env, result, timed
from benchmarks.data import isic_like, manifest, upload
from benchmarks.proxy import DelayProxy
from skin.data.fetch import Fetcher, FetchStats
from skin.data.storage import S3Store
from tests.servers import start_moto

NAME = "ingest"
TARGET = 10.0
DELAY_S = 0.05


@contextmanager
def moto_env(work: Path) -> Iterator[str]:
    """moto_server on loopback with test credentials; yields its URL."""
    server = start_moto(work)
    try:
        with env(
            AWS_ENDPOINT_URL=server.url,
            AWS_ACCESS_KEY_ID="bench-key-id",
            AWS_SECRET_ACCESS_KEY="bench-secret",
            AWS_DEFAULT_REGION="us-east-1",
        ):
            yield server.url
    finally:
        server.stop()


def serial(uri: str, keys: list[str]) -> int:
    """The notebook's way: one client, one get_object after another, bytes kept in memory."""
    store = S3Store(uri)
    client = boto3.client("s3")
    total = 0
    for key in keys:
        total += len(client.get_object(Bucket=store.bucket, Key=store.full_key(key))["Body"].read())
    return total


def fetch(uri: str, keys: list[str], fps: list[str], root: Path) -> FetchStats:
    fetcher = Fetcher(root)
    failed = [f.error for f in fetcher.fetch(S3Store(uri), keys, fps) if f.error]
    if failed:
        raise RuntimeError(f"{len(failed)} objects failed, e.g. {failed[0]}")
    return fetcher.stats


def run(ctx: Context) -> dict[str, Any]:
    n = ctx.pick(400, 2000)
    folder = isic_like(n, 1024, 768)
    with moto_env(ctx.work) as moto:
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        boto3.client("s3").create_bucket(Bucket=bucket)
        uri = f"s3://{bucket}/isic"
        upload(folder, uri)
        m = manifest(uri)
        keys, fps = m["key"].tolist(), m["fingerprint"].tolist()
        cache = ctx.work / "ingest-objects"
        with DelayProxy(moto, DELAY_S) as proxy, env(AWS_ENDPOINT_URL=proxy.url):
            baseline_s, nbytes = timed(lambda: serial(uri, keys))
            proxy.reset()
            ours_s, stats = timed(lambda: fetch(uri, keys, fps, cache))
            first_requests = dict(proxy.requests)
            proxy.reset()
            rerun_s, rerun_stats = timed(lambda: fetch(uri, keys, fps, cache))
            rerun_requests = dict(proxy.requests)
        shutil.rmtree(cache)
        limit_s, _ = timed(lambda: fetch(uri, keys, fps, cache))
        serial_plain_s, _ = timed(lambda: serial(uri, keys))
    return result(
        NAME,
        ctx,
        baseline_s,
        ours_s,
        TARGET,
        objects=n,
        image_size="1024x768",
        mean_object_kb=round(nbytes / n / 1024, 1),
        latency_ms=DELAY_S * 1000,
        workers=Fetcher(cache).workers,
        limit_s=round(limit_s, 4),
        limit_note="Fetcher straight to moto_server, no added latency: moto's own ceiling here",
        serial_no_latency_s=round(serial_plain_s, 4),
        objects_per_s={
            "serial": round(n / baseline_s, 1),
            "ours": round(n / ours_s, 1),
            "moto_limit": round(n / limit_s, 1),
        },
        requests_first_run=first_requests,
        rerun_s=round(rerun_s, 4),
        rerun_requests=rerun_requests,
        rerun_downloaded=rerun_stats.downloaded,
        downloaded=stats.downloaded,
    )
