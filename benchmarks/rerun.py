"""rerun: the whole pipeline (pipeline_flow, tiny recipe) again with nothing changed, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import Context, result
from skin.data.sample_data import write_sample_dataset
from skin.data.synthetic import class_counts
from tests.recipes import TINY
from tests.servers import free_port, start

NAME = "rerun"
TARGET_S = 20.0
REPO = Path(__file__).resolve().parents[1]
RECIPE = {**TINY, "train.epochs": 5}  # the tests' recipe, a few epochs
SCRIPT = """
import json, sys, time
began = time.time()
from flows.pipeline import pipeline_flow
imported = time.time()
data, overrides, twice = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3] == "twice"
first = pipeline_flow(data_uri=data, overrides=overrides)
done = time.time()
again_s = None
if twice:
    t0 = time.perf_counter()
    again = pipeline_flow(data_uri=data, overrides=overrides)
    again_s = time.perf_counter() - t0
print("RESULT " + json.dumps({"stages": first["stages"], "run_id": first["run_id"],
                              "began": began, "imported": imported, "done": done,
                              "in_process_again_s": again_s}))
"""


def flow_process(work: Path, data: Path, twice: bool, api_url: str | None = None) -> dict[str, Any]:
    """One `python` process running the flow; wall from launch to the end of its first run."""
    overrides = {
        **RECIPE,
        "work_dir": str(work / "work"),
        "tracking.tracking_uri": f"sqlite:///{work / 'mlflow.db'}",
        "tracking.experiment": "bench-rerun",
    }
    env = {
        **os.environ,
        "PREFECT_HOME": str(work / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
    }
    if api_url:
        env["PREFECT_API_URL"] = api_url
    cmd = [
        sys.executable,
        "-c",
        SCRIPT,
        str(data),
        json.dumps(overrides),
        "twice" if twice else "once",
    ]
    start = time.time()
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"pipeline run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    out = json.loads(lines[-1].removeprefix("RESULT "))
    out["wall_s"] = out["done"] - start
    out["startup_s"] = out["imported"] - start  # interpreter and imports
    out["flow_s"] = out["done"] - out["imported"]
    return out


def prefect_server(work: Path):
    """`prefect server start` on loopback, as deployments and workers use it."""
    port = free_port()
    env = {"PREFECT_HOME": str(work / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    cmd = [
        str(Path(sys.executable).parent / "prefect"),
        "server",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    return start(
        cmd,
        f"http://127.0.0.1:{port}",
        "/api/health",
        work / "prefect-server.log",
        env=env,
        timeout=120,
    )


def run(ctx: Context) -> dict[str, Any]:
    data = ctx.work / "data"
    write_sample_dataset(str(data), class_counts(per_class=40), size=40, seed=1)
    first = flow_process(ctx.work, data, twice=False)
    again = flow_process(ctx.work, data, twice=True)
    server = prefect_server(ctx.work)
    try:
        served = flow_process(ctx.work, data, twice=False, api_url=f"{server.url}/api")
    finally:
        server.stop()
    cached = [k for k, v in again["stages"].items() if v == "cached"]
    return result(
        NAME,
        ctx,
        first["wall_s"],
        again["wall_s"],
        1.0,
        ratio_note="first run ÷ cached re-run; the target is the re-run's wall time",
        target_s=TARGET_S,
        meets_target_s=bool(again["wall_s"] < TARGET_S),
        images=sum(class_counts(per_class=40).values()),
        recipe=RECIPE,
        first_stages=first["stages"],
        rerun_stages=again["stages"],
        rerun_cached=cached,
        same_run_id=first["run_id"] == again["run_id"],
        in_process_rerun_s=round(again["in_process_again_s"], 3),
        rerun_startup_s=round(again["startup_s"], 2),
        rerun_flow_s=round(again["flow_s"], 2),
        first_startup_s=round(first["startup_s"], 2),
        server_rerun_s=round(served["wall_s"], 2),
        server_rerun_flow_s=round(served["flow_s"], 2),
        server_rerun_stages=served["stages"],
        server_note="the same re-run in a fresh process against `prefect server start` (how"
        " deployments run): no temporary API server to start",
        wall_note="fresh `python` process each time: interpreter, imports, Prefect's temporary "
        "API server, MLflow on SQLite, then the flow",
    )
