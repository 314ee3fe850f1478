"""Fetch once: remote objects copied in parallel into a local cache addressed by their fingerprint."""

from __future__ import annotations

import hashlib
import logging
import random
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from skin.data.storage import LocalStore, S3Store, StorageError, Store, safe_key

log = logging.getLogger(__name__)

DEFAULT_WORKERS = 32  # S3Store keeps 32 pooled connections; more threads would only queue
STREAM_ATTEMPTS = 3  # botocore retries the request; a body that breaks mid-stream is ours to retry
_CHUNK = 1 << 18
_ETAG = re.compile(r"^[0-9a-f]{32}(-[0-9]{1,6})?$")  # MD5, or a multipart ETag "md5-parts"
_MD5 = re.compile(r"^[0-9a-f]{32}$")

Chunks = Callable[[], Iterable[bytes]]
Opener = Callable[[str, str], Chunks]  # (key, fingerprint) -> chunks


@dataclass(frozen=True)
class Fetched:
    """One requested object: its local file, or why there is none."""

    index: int
    path: Path | None
    error: str | None = None


@dataclass
class FetchStats:
    """What a fetcher did: objects downloaded, found in the cache, read in place, failed."""

    downloaded: int = 0
    cached: int = 0
    local: int = 0
    failed: int = 0
    bytes: int = 0


class FetchError(RuntimeError):
    """One object could not be fetched or does not match its fingerprint; says which and why."""


class ObjectCache:
    """Files named only by content fingerprint, so no object key can choose a path."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, fingerprint: str) -> Path:
        fp = str(fingerprint).strip().strip('"').lower()
        if not fp or fp == "nan":
            raise FetchError("no fingerprint: re-list the data so the manifest has ETags/MD5s")
        name = fp if _ETAG.match(fp) else "h" + hashlib.sha256(fp.encode()).hexdigest()[:40]
        return self.root / name[:2] / name

    def write(self, fingerprint: str, chunks: Iterable[bytes], verify: bool = True) -> int:
        """Stream into a private temp file, check the MD5 where the fingerprint is one (unless
        the store already checked it), and rename into place."""
        final = self.path(fingerprint)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
        md5, size = hashlib.md5(usedforsecurity=False), 0
        try:
            with tmp.open("wb") as fh:
                for chunk in chunks:
                    if verify:
                        md5.update(chunk)
                    fh.write(chunk)
                    size += len(chunk)
            expected = str(fingerprint).strip('"').lower()
            if verify and _MD5.match(expected) and md5.hexdigest() != expected:
                raise FetchError(
                    f"content MD5 {md5.hexdigest()} differs from fingerprint {expected}:"
                    " the object changed since listing; re-list the data"
                )
            tmp.replace(final)
        finally:
            tmp.unlink(missing_ok=True)
        return size


def _boto_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(errors worth another attempt: a body that broke mid-stream; every botocore error)."""
    from botocore import exceptions as e

    return (e.IncompleteReadError, e.ReadTimeoutError, e.ResponseStreamingError), (
        e.BotoCoreError,
        e.ClientError,
    )


def _s3_opener(store: S3Store) -> Opener:
    """One shared client (boto3 clients are thread-safe): no per-thread client start-up.
    `IfMatch` makes S3 itself refuse an object whose ETag is no longer the manifest's."""
    client, bucket = store.client, store.bucket

    def opener(key: str, fingerprint: str) -> Chunks:
        def chunks() -> Iterator[bytes]:
            full = store.full_key(key)
            etag = '"' + str(fingerprint).strip('"') + '"'
            try:
                body = client.get_object(Bucket=bucket, Key=full, IfMatch=etag)["Body"]
            except client.exceptions.ClientError as err:
                if err.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
                    raise FetchError(
                        f"s3://{bucket}/{full} changed since listing (ETag is not {etag}):"
                        " re-list the data"
                    ) from err
                raise
            try:
                yield from body.iter_chunks(_CHUNK)
            finally:
                body.close()

        return chunks

    return opener


def _opener(store: Store) -> tuple[Opener, bool]:
    """How to stream one object, and whether the store itself checks the fingerprint."""
    if isinstance(store, S3Store):
        return _s3_opener(store), True
    return (lambda key, _fp: lambda: [store.get(key)]), False


class Fetcher:
    """Bounded parallel fetches into an ObjectCache; objects already there are never requested."""

    def __init__(self, root: str | Path, workers: int | None = None) -> None:
        self.cache = ObjectCache(root)
        self.workers = workers or DEFAULT_WORKERS
        self.stats = FetchStats()

    def fetch(
        self, store: Store, keys: Sequence[str], fingerprints: Sequence[str]
    ) -> Iterator[Fetched]:
        """Yield every object as it becomes available: cached and local ones first, then
        downloads as they finish. A failure is yielded with its reason, never raised."""
        if isinstance(store, LocalStore):
            yield from self._local(store, keys)
            return
        missing = []
        for i, fp in enumerate(fingerprints):
            try:
                path = self.cache.path(fp)
            except FetchError as err:
                yield self._failed(i, keys[i], str(err))
                continue
            if path.is_file():
                self.stats.cached += 1
                yield Fetched(i, path)
            else:
                missing.append(i)
        if missing:
            yield from self._download(store, keys, fingerprints, missing)

    def _local(self, store: LocalStore, keys: Sequence[str]) -> Iterator[Fetched]:
        """A local folder is read in place: copying it would only double the disk it takes."""
        for i, key in enumerate(keys):
            try:
                path = store.root / safe_key(key)
            except StorageError as err:
                yield self._failed(i, key, str(err))
                continue
            if path.is_file():
                self.stats.local += 1
                yield Fetched(i, path)
            else:
                yield self._failed(i, key, f"object not found: {path}")

    def _download(
        self, store: Store, keys: Sequence[str], fps: Sequence[str], rows: list[int]
    ) -> Iterator[Fetched]:
        opener, checked = _opener(store)
        reported = (FetchError, StorageError, *_boto_errors()[1])
        pool = ThreadPoolExecutor(max_workers=min(self.workers, len(rows)))
        try:
            jobs: dict[Future[int], int] = {
                pool.submit(self._one, opener(keys[i], fps[i]), fps[i], not checked): i
                for i in rows
            }
            for job in as_completed(jobs):
                i = jobs[job]
                try:
                    self.stats.bytes += job.result()
                except reported as err:
                    yield self._failed(i, keys[i], f"{type(err).__name__}: {err}")
                    continue
                self.stats.downloaded += 1
                yield Fetched(i, self.cache.path(fps[i]))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _one(self, chunks: Chunks, fingerprint: str, verify: bool) -> int:
        retryable, attempt = _boto_errors()[0], 1
        while True:
            try:
                return self.cache.write(fingerprint, chunks(), verify)
            except retryable:
                if attempt >= STREAM_ATTEMPTS:
                    raise
            time.sleep(0.2 * 2**attempt * random.uniform(0.5, 1.5))
            attempt += 1

    def _failed(self, index: int, key: str, reason: str) -> Fetched:
        self.stats.failed += 1
        log.warning("cannot fetch %s: %s", key, reason)
        return Fetched(index, None, reason)
