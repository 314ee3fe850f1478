"""S3 faults injected for real through a faulty proxy in front of moto_server: retries, clear errors."""

from __future__ import annotations

import pytest

from skin.base.config import DataConfig
from skin.data.storage import S3Store, StorageError
from skin.data.validate import validate_dataset
from tests.faults import FaultyProxy, Plan

pytestmark = pytest.mark.server


@pytest.fixture
def small_bucket(s3_client, bucket: str) -> str:
    from skin.data.sample_data import write_sample_dataset

    write_sample_dataset(f"s3://{bucket}/d", dict.fromkeys(["AK", "NV", "MEL"], 6), size=24, seed=2)
    return bucket


@pytest.mark.slow  # tens of seconds: out of `make test-fast`, still in `make test`
@pytest.mark.parametrize("mode", ["status", "slowdown", "drop"])
def test_transient_faults_are_retried_and_every_image_arrives(
    moto, small_bucket: str, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    count = 3 if mode == "slowdown" else 6  # SlowDown also makes botocore throttle itself
    with FaultyProxy(moto.url, Plan(mode=mode, count=count, status=500)) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        report = validate_dataset(DataConfig(uri=f"s3://{small_bucket}/d"))
        assert proxy.plan.faults == count, "the faults were really injected"
    assert report.problems.empty, f"every image must arrive despite {mode}: {report.problems}"
    assert int(report.good.sum()) == 18


def test_a_hanging_endpoint_times_out_and_is_retried(
    moto, small_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SKIN_S3_READ_TIMEOUT", "1")
    with FaultyProxy(moto.url, Plan(mode="hang", count=2)) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        store = S3Store(f"s3://{small_bucket}/d")
        keys = [o.key for o in store.list()]
        assert all(store.get(k) for k in keys), "every object readable after timeouts"
        assert proxy.plan.faults == 2


def test_an_outage_longer_than_the_retry_budget_fails_clearly(
    moto, small_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SKIN_S3_MAX_ATTEMPTS", "3")
    with FaultyProxy(moto.url, Plan(mode="status", count=10_000, status=503)) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        with pytest.raises(StorageError, match=rf"cannot list s3://{small_bucket}/d.*503"):
            list(S3Store(f"s3://{small_bucket}/d").list())
        assert 3 <= proxy.plan.seen <= 4, f"exactly the retry budget was spent: {proxy.plan.seen}"
