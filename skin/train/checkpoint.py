"""Checkpoints as timm keeps them: atomic writes, `last` and `best` links, retention, safe loads."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

FORMAT = 1
_EPOCH = re.compile(r"^epoch_(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, of another format, or carries more than plain tensors."""


def _atomic_save(obj: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    except BaseException:  # a failed write (disk full) leaves no half file behind
        tmp.unlink(missing_ok=True)
        raise


def _atomic_link(src: Path, dst: Path) -> None:
    """Point `dst` at `src` in one rename: a reader sees the old or the new file, never half."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        tmp.write_bytes(src.read_bytes())
    tmp.replace(dst)


def epoch_path(folder: Path, epoch: int) -> Path:
    return folder / f"epoch_{epoch:04d}.pt"


def save(
    folder: Path, epoch: int, state: dict[str, Any], *, is_best: bool, keep: int | None
) -> Path:
    """Write epoch N, move `last` (and `best`) to it, then apply retention (best always kept)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = epoch_path(folder, epoch)
    _atomic_save({"format": FORMAT, "epoch": epoch, **state}, path)
    _atomic_link(path, folder / "last.pt")
    if is_best:
        _atomic_link(path, folder / "best.pt")
    if keep is not None:
        epochs = sorted(int(m.group(1)) for p in folder.iterdir() if (m := _EPOCH.match(p.name)))
        best = folder / "best.pt"
        for old in epochs[:-keep]:
            p = epoch_path(folder, old)
            if not (best.exists() and p.samefile(best)):
                p.unlink(missing_ok=True)
    return path


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with weights_only=True: a checkpoint that carries code is refused, not run."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # UnpicklingError, RuntimeError (truncated zip), EOFError
        raise CheckpointError(
            f"{path} is not a plain-tensor checkpoint or is damaged: {type(err).__name__}: {err}"
        ) from err
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a skin checkpoint of format {FORMAT}")
    return obj


def listed(folder: Path) -> list[Path]:
    """Epoch checkpoints present, oldest first."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _EPOCH.match(p.name))
