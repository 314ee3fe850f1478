"""What every benchmark shares: sizes, timing, machine facts, the result file and its table."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
SIZES = ("quick", "full")


@dataclass(frozen=True)
class Context:
    """One benchmark session: the size preset, a scratch folder, where results go."""

    size: str
    work: Path
    results: Path = RESULTS

    @property
    def quick(self) -> bool:
        return self.size == "quick"

    def pick(self, quick: Any, full: Any) -> Any:
        return quick if self.quick else full


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def best_of(repeats: int, fns: dict[str, Callable[[], Any]]) -> dict[str, float]:
    """Run the contenders interleaved `repeats` times; keep each one's best wall time.

    Interleaving spreads a noisy neighbour's load over all contenders alike."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            best[name] = min(best[name], timed(fn)[0])
    return best


def machine() -> dict[str, Any]:
    """The facts a reader needs to compare figures: CPU, cores, load, versions, commit."""
    import numpy
    import PIL
    import torch

    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pillow": PIL.__version__,
        "numpy": numpy.__version__,
        "torch_threads": torch.get_num_threads(),
        "commit": _commit(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except OSError:
        return None
    return out.stdout.strip() or None


def result(
    name: str, ctx: Context, baseline_s: float, ours_s: float, target: float, **extra: Any
) -> dict[str, Any]:
    """The common record: ratio = baseline_s / ours_s, compared with the issue's target."""
    ratio = baseline_s / ours_s if ours_s > 0 else float("inf")
    return {
        "name": name,
        "size": ctx.size,
        "baseline_s": round(baseline_s, 4),
        "ours_s": round(ours_s, 4),
        "ratio": round(ratio, 3),
        "target_ratio": target,
        "meets_target": bool(ratio >= target),
        **extra,
        "machine": machine(),
    }


def write(ctx: Context, record: dict[str, Any]) -> Path:
    ctx.results.mkdir(parents=True, exist_ok=True)
    path = ctx.results / f"{record['name']}.json"
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return path


def table(record: dict[str, Any]) -> str:
    """A plain two-column table of one record's scalar fields (nested ones shown as JSON)."""
    rows = [(k, v) for k, v in record.items() if k != "machine"]
    width = max(len(k) for k, _ in rows)
    lines = [f"== {record['name']} ({record['size']}) ".ljust(width + 30, "=")]
    for key, val in rows:
        text = json.dumps(val, default=str) if isinstance(val, dict | list) else str(val)
        lines.append(f"{key.ljust(width)}  {text}")
    return "\n".join(lines)


@contextmanager
def env(**values: str | None) -> Iterator[None]:
    """Set (or, with None, unset) environment variables for a block, then restore them."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        for key, val in values.items():
            if val is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = val
        yield
    finally:
        for key, val in saved.items():
            if val is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = val
