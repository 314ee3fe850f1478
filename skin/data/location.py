"""Where a dataset lives (a folder or s3://bucket/prefix), and where its listings and manifests are kept.

Both parsed once and passed typed: a `DataLocation` says local or S3 (bucket, prefix) without
string checks at each use, a `DatasetState` is the (state_uri, data_uri) pair the data stages
take together.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from skin.base.config import PipelineConfig

S3 = "s3://"
FORMS = "a folder path (or file://path) or s3://bucket/prefix"


class LocationError(ValueError):
    """A dataset location that is neither a folder nor s3://bucket/prefix; names it and the forms."""


@dataclass(frozen=True)
class DataLocation:
    """A dataset's root: a local folder (`path`) or an S3 prefix (`bucket`, `prefix`)."""

    uri: str  # as given, file:// removed

    @staticmethod
    def parse(text: str) -> DataLocation:
        """`text` as a location; a `LocationError` naming it for an empty or unsupported one."""
        if not isinstance(text, str) or not text.strip():
            raise LocationError(f"data location {text!r} is empty; use {FORMS}")
        if text.startswith(S3):
            if not urlparse(text).netloc:
                raise LocationError(f"S3 URI without a bucket: {text!r}; use {FORMS}")
            return DataLocation(text)
        if "://" in text and not text.startswith("file://"):
            raise LocationError(f"unsupported data URI {text!r}: use {FORMS}")
        return DataLocation(text.removeprefix("file://"))

    def __str__(self) -> str:
        return self.uri

    @property
    def is_s3(self) -> bool:
        return self.uri.startswith(S3)

    @property
    def bucket(self) -> str:
        """The S3 bucket ('' for a folder)."""
        return urlparse(self.uri).netloc if self.is_s3 else ""

    @property
    def prefix(self) -> str:
        """The key prefix under the bucket, without slashes at either end ('' for a folder)."""
        return urlparse(self.uri).path.strip("/") if self.is_s3 else ""

    @property
    def source(self) -> str:
        """The root as manifests record it: an S3 URI without its trailing '/', a folder absolute."""
        if self.is_s3:
            return self.uri.rstrip("/")
        return str(Path(self.uri).expanduser().resolve())

    @property
    def dataset_id(self) -> str:
        """A readable, unique folder name for the dataset (manifests and caches live under it)."""
        normal = self.source
        slug = re.sub(r"[^A-Za-z0-9]+", "-", normal.split("://")[-1]).strip("-")[-40:]
        return f"{slug}-{hashlib.sha256(normal.encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class DatasetState:
    """Where one dataset's listings and manifests are kept (`state_uri`: the shared store or
    work_dir) and the dataset they describe (`data_uri`): what the data stages take together."""

    state_uri: str
    data_uri: str

    @classmethod
    def of(cls, config: PipelineConfig) -> DatasetState:
        """The pair a pipeline config names (`config.state_uri`, `config.data.uri`)."""
        return cls(config.state_uri, config.data.uri)

    @property
    def location(self) -> DataLocation:
        return DataLocation.parse(self.data_uri)
