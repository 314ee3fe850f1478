"""Run the benchmarks: `python -m benchmarks --size quick|full [--only name,...]`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import RESULTS, SIZES, Context, table, write

log = logging.getLogger("benchmarks")
ORDER = (
    "ingest",
    "decode",
    "epoch_cache",
    "head_only",
    "loader",
    "rerun",
    "memory",
    "eval_ci",
    "render",
    "serve",
    "explain",
    "sweep",
    "decisions",
    "audit",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--size", choices=SIZES, default="quick")
    parser.add_argument("--only", default="", help="comma-separated names; default all")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(ORDER)
    unknown = sorted(set(names) - set(ORDER))
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; known: {', '.join(ORDER)}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    start, failed = time.perf_counter(), []
    for name in names:
        try:
            run_one(name, args.size, args.results)
        except Exception:  # one broken benchmark must not hide the others' figures
            log.exception("benchmark %s failed", name)
            failed.append(name)
    print(f"all done in {time.perf_counter() - start:.0f} s; failed: {failed or 'none'}")
    return 1 if failed else 0


def run_one(name: str, size: str, results: Path) -> None:
    """One benchmark in its own scratch folder; its record is printed and written."""
    with tempfile.TemporaryDirectory(prefix=f"skin-bench-{name}-") as tmp:
        ctx = Context(size, Path(tmp), results)
        t0 = time.perf_counter()
        record = importlib.import_module(f"benchmarks.{name}").run(ctx)
        record["bench_wall_s"] = round(time.perf_counter() - t0, 1)
        path = write(ctx, record)
        print(table(record), f"\n-> {path}\n", flush=True)


if __name__ == "__main__":
    sys.exit(main())
