"""decisions: every decision the pipeline makes for a user, its promised error rate beside the measured one.

Each module of `benchmarks/decision_rates/` simulates one kind of decision many times on data with
ISIC 2019's shape (class imbalance, 1-3 photos per lesion, 18 slices) with the project's own
functions, and returns `Rate` rows. This benchmark times nothing against a baseline: its "baseline"
is the promise, and `meets_target` says whether every promise held.
"""

from __future__ import annotations

import importlib
import pkgutil
import time
from typing import Any

from benchmarks import decision_rates
from benchmarks.common import Context, machine

NAME = "decisions"


def modules() -> list[str]:
    """The decision modules, in name order (one file per kind of decision)."""
    return sorted(m.name for m in pkgutil.iter_modules(decision_rates.__path__))


def run(ctx: Context) -> dict[str, Any]:
    rows, seconds = [], {}
    for name in modules():
        t0 = time.perf_counter()
        module = importlib.import_module(f"benchmarks.decision_rates.{name}")
        rows += [r.to_dict() for r in module.rows(ctx)]
        seconds[name] = round(time.perf_counter() - t0, 1)
    print(markdown(rows), flush=True)
    return {
        "name": NAME,
        "size": ctx.size,
        "meets_target": all(r["holds"] for r in rows),
        "broken": [r["decision"] for r in rows if not r["holds"]],
        "rates": rows,
        "seconds": seconds,
        "machine": machine(),
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    """The README's table: decision, promised, measured with its Monte-Carlo interval, trials."""
    lines = [
        "| decision | promised | measured (95 % MC interval) | trials | holds |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['decision']} | {r['promised']} | {r['measured']:.3f}"
            f" ({r['low']:.3f}-{r['high']:.3f}) | {r['trials']} | {'yes' if r['holds'] else 'NO'} |"
        )
    return "\n".join(lines)
