"""Plain helpers shared by the tests (no fixtures, no side effects on import)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.recipes import TINY


def snapshot(s3_client: Any, bucket: str) -> dict[str, tuple[str, int]]:
    """Every object's ETag and size: compared before and after a run (nothing lost or changed)."""
    out: dict[str, tuple[str, int]] = {}
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = (obj["ETag"], obj["Size"])
    return out


def tiny_config(tmp_path: Path, data: Path | str, **extra: object) -> Any:
    """The tiny recipe on `data`, working under `tmp_path`, with dotted overrides."""
    from skin.config import load_config

    overrides = {**TINY, "data.uri": str(data), "work_dir": str(tmp_path / "work"), **extra}
    return load_config(None, overrides)


def make_manifest(tmp_path: Path, data: Path, **extra: object) -> tuple[str, Any]:
    """List and split `data` into a manifest under `tmp_path`: its URI and the config used."""
    from skin import manifest as mf
    from skin.datastages import build_manifest, list_images, source_uri

    cfg = tiny_config(tmp_path, data, **extra)
    df = build_manifest(list_images(cfg.data), source_uri(cfg.data.uri), cfg.split)
    uri = str(tmp_path / "manifest.parquet")
    mf.write(df, uri)
    return uri, cfg


def invoke(*args: str) -> tuple[int, str]:
    """Run the `skin` CLI in-process: exit code and stdout (+ stderr unless `--json`)."""
    from typer.testing import CliRunner

    from skin.cli import app

    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    if "--json" in args:
        return result.exit_code, result.stdout
    return result.exit_code, result.output
