"""Object stores behind one small interface: an S3 prefix or a local folder, read-mostly."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from skin.data.location import DataLocation, LocationError

_CHUNK = 1 << 20


class StorageError(RuntimeError):
    """A store could not be reached or an object could not be read; says which and why."""


@dataclass(frozen=True)
class ObjectInfo:
    """One object under a store's root: key relative to the root, size and content fingerprint."""

    key: str
    size: int
    fingerprint: str


class Store(Protocol):
    """What every stage needs from storage. Keys are '/'-separated and relative to the root."""

    uri: str

    def list(self) -> Iterator[ObjectInfo]: ...
    def get(self, key: str) -> bytes: ...
    def put(self, key: str, data: bytes) -> None: ...
    def exists(self, key: str) -> bool: ...


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def open_store(uri: str | DataLocation, **s3_options: object) -> Store:
    """An S3 URI gives an S3Store; anything else is a local folder."""
    try:
        where = uri if isinstance(uri, DataLocation) else DataLocation.parse(uri)
    except LocationError as err:
        raise StorageError(str(err)) from err
    if where.is_s3:
        return S3Store(where.uri, **s3_options)  # type: ignore[arg-type]
    return LocalStore(where.uri)


def safe_key(key: str) -> str:
    """Reject keys that could escape a root ('..', absolute) or name no file under it ('.', empty
    parts); callers never write outside it. Parts are split as written, not normalised away."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("..", ".", "") for p in parts):
        raise StorageError(f"unsafe object key {key!r}")
    return key


class LocalStore:
    """A folder on disk. Fingerprints are MD5 of the bytes, equal to S3's single-part ETag."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / safe_key(key)

    def list(self) -> Iterator[ObjectInfo]:
        if not self.root.is_dir():
            raise StorageError(f"data folder not found: {self.root}")
        paths = sorted(p for p in self.root.rglob("*") if p.is_file())
        with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2)) as pool:
            yield from pool.map(self._info, paths)

    def _info(self, path: Path) -> ObjectInfo:
        md5 = hashlib.md5(usedforsecurity=False)
        with path.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                md5.update(chunk)
        return ObjectInfo(
            path.relative_to(self.root).as_posix(), path.stat().st_size, md5.hexdigest()
        )

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as err:
            raise StorageError(f"object not found: {self.root / key}") from err

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()


def _s3_config(max_pool: int, retries: int, connect_timeout: float, read_timeout: float):
    from botocore.config import Config

    return Config(
        max_pool_connections=max_pool,
        retries={"max_attempts": retries, "mode": "adaptive"},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
    )


class S3Store:
    """An S3 prefix. Endpoint and credentials come from the standard AWS chain
    (env incl. AWS_ENDPOINT_URL, profiles, instance roles); nothing is passed in code."""

    def __init__(
        self,
        uri: str,
        *,
        max_pool: int = 32,
        retries: int | None = None,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
    ) -> None:
        # The retry budget and timeouts: arguments, else SKIN_S3_* variables, else defaults.
        retries = retries or int(os.environ.get("SKIN_S3_MAX_ATTEMPTS", "8"))
        connect_timeout = connect_timeout or float(os.environ.get("SKIN_S3_CONNECT_TIMEOUT", "5"))
        read_timeout = read_timeout or float(os.environ.get("SKIN_S3_READ_TIMEOUT", "30"))
        parsed = urlparse(uri)
        if not parsed.netloc:
            raise StorageError(f"S3 URI without a bucket: {uri!r}")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.uri = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self._config = _s3_config(max_pool, retries, connect_timeout, read_timeout)
        self._local = threading.local()
        self._pid = os.getpid()

    @property
    def client(self):
        """One client per process and thread: boto3 clients are not fork-safe."""
        if self._pid != os.getpid():
            self._local = threading.local()
            self._pid = os.getpid()
        client = getattr(self._local, "client", None)
        if client is None:
            import boto3

            client = boto3.session.Session().client("s3", config=self._config)
            self._local.client = client
        return client

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        state["_local"] = None
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def full_key(self, key: str) -> str:
        """The bucket key of `key` under this prefix (unsafe keys refused)."""
        safe_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _where(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.full_key(key)}"

    def list(self) -> Iterator[ObjectInfo]:
        from botocore.exceptions import BotoCoreError, ClientError

        start = f"{self.prefix}/" if self.prefix else ""
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=start):
                for obj in page.get("Contents", []):
                    key = obj["Key"][len(start) :]
                    if not key or key.endswith("/"):
                        continue
                    yield ObjectInfo(key, int(obj["Size"]), obj["ETag"].strip('"'))
        except (BotoCoreError, ClientError) as err:
            raise StorageError(f"cannot list {self.uri}: {err}") from err

    def get(self, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.full_key(key))["Body"].read()
        except (BotoCoreError, ClientError) as err:
            raise StorageError(f"cannot read {self._where(key)}: {err}") from err

    def put(self, key: str, data: bytes) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=self.full_key(key), Body=data)
        except (BotoCoreError, ClientError) as err:
            raise StorageError(f"cannot write {self._where(key)}: {err}") from err

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self.full_key(key))
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise StorageError(f"cannot check {self._where(key)}: {err}") from err
        return True


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail before any work when an S3 endpoint or bucket cannot be reached (one quick try)."""
    try:
        if not DataLocation.parse(uri).is_s3:
            return
    except LocationError as err:
        raise StorageError(f"data.uri: {err}") from err
    from botocore.exceptions import BotoCoreError, ClientError

    store = S3Store(uri, retries=1, connect_timeout=timeout, read_timeout=timeout)
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or "the default AWS endpoint"
    try:
        store.client.head_bucket(Bucket=store.bucket)
    except (BotoCoreError, ClientError) as err:
        raise StorageError(
            f"data.uri {uri}: cannot reach bucket {store.bucket!r} at {endpoint} ({err}); check"
            " AWS_ENDPOINT_URL, the network and credentials (AWS_* variables or profile)"
        ) from err


def join_uri(base: str, *parts: str) -> str:
    """Join a folder path or s3:// URI with relative parts."""
    if is_s3(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(base).joinpath(*parts))


def _s3_object(uri: str) -> tuple[S3Store, str]:
    """The store and key of one object named as s3://bucket/key."""
    parent, _, name = uri.rpartition("/")
    return S3Store(parent), name


def read_uri(uri: str) -> bytes:
    """Read one file given as a local path or s3://bucket/key."""
    if is_s3(uri):
        store, key = _s3_object(uri)
        return store.get(key)
    return Path(uri).read_bytes()


def write_uri(uri: str, data: bytes) -> None:
    """Write one file atomically to a local path or s3://bucket/key."""
    if is_s3(uri):
        store, key = _s3_object(uri)
        store.put(key, data)
        return
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    LocalStore(path.parent).put(path.name, data)


def exists_uri(uri: str) -> bool:
    """Whether a local file or an s3:// object is already there."""
    if is_s3(uri):
        store, key = _s3_object(uri)
        return store.exists(key)
    return Path(uri).exists()
