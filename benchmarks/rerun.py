"""rerun: an unchanged `skin run` again, and `skin predict` of one image, as a user types them.

Each measurement is a fresh `python -m skin.cli ...` process, timed from launch to exit. The
baseline is the same commands with the code before #22 item 7 (`BASELINE`, extracted with `git
archive`), run in the same session, interleaved repetition by repetition with ours, on the same
data, each side with its own work folder and SQLite MLflow store. Recorded per variant: the median
(and every repetition), the stages (all must be cached), and which heavy libraries the process
imported. Variants: with Prefect's temporary server (no PREFECT_API_URL), and against a local
server (`skin server start` for ours; PREFECT_API_URL for the baseline, which has no such command).
"""

from __future__ import annotations

import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import Context, result
from skin.data.sample_data import write_sample_dataset
from skin.data.synthetic import class_counts
from tests.recipes import TINY
from tests.servers import free_port, start

NAME = "rerun"
REPO = Path(__file__).resolve().parents[1]
BASELINE = os.environ.get("SKIN_BENCH_RERUN_BASELINE", "0e0a48a")  # main before item 7
TARGETS = {"ours_temporary": 6.0, "ours_server": 4.0, "ours_predict": 4.0}  # seconds (#22)
HEAVY = ("torch", "torchvision", "timm", "sklearn", "scipy", "mlflow", "prefect")
DRIVER = f"""
import atexit, json, sys
heavy = {HEAVY!r}
atexit.register(lambda: print("HEAVY " + json.dumps(sorted(m for m in heavy if m in sys.modules)),
                              file=sys.stderr, flush=True))
from skin.cli import app
app(sys.argv[1:], prog_name="skin")
"""


def code_tree(dst: Path) -> Path:
    """The baseline commit's skin/, flows/, tasks/ and configs/ under `dst`."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", BASELINE, "skin", "flows", "tasks", "configs"],
        capture_output=True,
        timeout=120,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dst, filter="data")
    return dst


def recipe(ctx: Context, side: Path) -> Path:
    """The side's config file: the tiny recipe (quick) or the demo's (full), its own places."""
    demo = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    cfg: dict[str, Any] = {} if ctx.quick else demo
    flat = {**TINY, "train.epochs": 5} if ctx.quick else {}
    flat |= {
        "work_dir": str(side / "work"),
        "tracking.tracking_uri": f"sqlite:///{side / 'mlflow.db'}",
        "tracking.experiment": "bench-rerun",
    }
    for dotted, value in flat.items():
        *parents, leaf = dotted.split(".")
        node = cfg
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    path = side / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def skin(code: Path, cwd: Path, home: Path, *args: str, api_url: str | None = None) -> dict:
    """One `skin` command in a fresh process: wall time, its JSON output, heavy imports."""
    env = {
        **os.environ,
        "PYTHONPATH": str(code),
        "PREFECT_HOME": str(home),
        # Both Prefect homes read one result store: the same cached stages with or without server.
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(cwd.parent / "results"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("PREFECT_API_URL", None)
    if api_url:
        env["PREFECT_API_URL"] = api_url
    cmd = [sys.executable, "-c", DRIVER, "--json", *args]
    t0, cpu0 = time.perf_counter(), _children_cpu()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    if proc.returncode != 0:
        raise RuntimeError(f"skin {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    heavy = [ln for ln in proc.stderr.splitlines() if ln.startswith("HEAVY ")]
    out, _ = json.JSONDecoder().raw_decode(proc.stdout[proc.stdout.index("{") :])
    used = json.loads(heavy[-1][6:]) if heavy else None
    return {"wall_s": wall, "cpu_s": cpu, "out": out, "heavy": used}


def _children_cpu() -> float:
    """CPU seconds (user + system) of the waited-for children so far: the command, and the
    temporary Prefect server it waits for. Less moved by other users' load than wall time."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def old_server(work: Path) -> Any:
    """`prefect server start` for the baseline (the way the old README said: PREFECT_API_URL)."""
    port = free_port()
    cmd = [str(Path(sys.executable).parent / "prefect"), "server", "start", "--port", str(port)]
    env = {
        "PREFECT_HOME": str(work / "prefect-old-server"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "0",
    }
    return start(cmd, f"http://127.0.0.1:{port}", "/api/health", work / "old.log", env, 180)


def run(ctx: Context) -> dict[str, Any]:
    data = ctx.work / "data"
    per_class, size = ctx.pick((40, 40), (60, 96))  # full: the demo's data (`skin demo`)
    write_sample_dataset(str(data), class_counts(per_class=per_class), size=size, seed=1)
    repeats = ctx.pick(3, 5)
    temporary, served = ctx.work / "home-tmp", ctx.work / "home-srv"
    code = {"base": code_tree(ctx.work / "base-code"), "ours": REPO}
    cwd = {side: ctx.work / side for side in code}
    for folder in cwd.values():
        folder.mkdir()
    args = {side: ("run", "--data", str(data), "--config", str(recipe(ctx, cwd[side])))
            for side in code}  # fmt: skip
    first = {side: skin(code[side], cwd[side], temporary, *args[side]) for side in code}
    image = str(next(data.rglob("*.jpg")))
    ckpt = {side: str(Path(first[side]["out"]["report_dir"]).parent / "checkpoints" / "best.pt")
            for side in code}  # fmt: skip
    t0 = time.perf_counter()
    skin(REPO, cwd["ours"], served, "server", "start", "--port", str(free_port()))
    server_start_s = time.perf_counter() - t0
    base_server = old_server(ctx.work)

    def base(*more: str, **kw: Any) -> dict:
        return skin(code["base"], cwd["base"], temporary, *more, **kw)

    def ours(home: Path, *more: str) -> dict:
        return skin(REPO, cwd["ours"], home, *more)

    variants = {
        "base_temporary": lambda: base(*args["base"]),
        "ours_temporary": lambda: ours(temporary, *args["ours"]),
        "base_server": lambda: base(*args["base"], api_url=f"{base_server.url}/api"),
        "ours_server": lambda: ours(served, *args["ours"]),
        "base_predict": lambda: base("predict", image, "--model", ckpt["base"]),
        "ours_predict": lambda: ours(temporary, "predict", image, "--model", ckpt["ours"]),
    }
    runs: dict[str, list[dict]] = {k: [] for k in variants}
    loads = []
    try:
        for _ in range(repeats):
            loads.append(round(os.getloadavg()[0], 2))
            for name, fn in variants.items():
                runs[name].append(fn())
    finally:
        ours(served, "server", "stop")
        base_server.stop()
    median = {k: statistics.median(r["wall_s"] for r in v) for k, v in runs.items()}
    stages = {k: v[-1]["out"].get("stages") for k, v in runs.items() if "predict" not in k}
    all_cached = all(
        s == "cached" for v in stages.values() for k, s in (v or {}).items() if k != "list-images"
    )
    return result(
        NAME,
        ctx,
        median["base_temporary"],
        median["ours_temporary"],
        1.0,
        ratio_note="median re-run with the temporary server: the code before item 7 ÷ ours",
        baseline_commit=BASELINE,
        repeats=repeats,
        load_avg_1m_per_repeat=loads,
        median_s={k: round(v, 2) for k, v in median.items()},
        every_s={k: [round(r["wall_s"], 2) for r in v] for k, v in runs.items()},
        median_cpu_s={
            k: round(statistics.median(r["cpu_s"] for r in v), 2) for k, v in runs.items()
        },
        ratios={
            "temporary": round(median["base_temporary"] / median["ours_temporary"], 2),
            "server": round(median["base_server"] / median["ours_server"], 2),
            "predict": round(median["base_predict"] / median["ours_predict"], 2),
        },
        targets_s=TARGETS,
        meets_targets={k: bool(median[k] <= t) for k, t in TARGETS.items()},
        heavy_imports={k: v[-1]["heavy"] for k, v in runs.items()},
        rerun_stages=stages,
        all_cached=all_cached,
        first_run_s={s: round(r["wall_s"], 1) for s, r in first.items()},
        server_start_s=round(server_start_s, 1),
        images=sum(class_counts(per_class=per_class).values()),
        recipe="tests.recipes.TINY, 5 epochs" if ctx.quick else "configs/demo.yaml",
        wall_note="fresh `python -m skin.cli` process each time, launch to exit: interpreter, "
        "imports, the Prefect API (temporary or local server), MLflow on SQLite, the flow",
    )
