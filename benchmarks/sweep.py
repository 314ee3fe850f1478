"""sweep: 8 trials of `sweep_flow` (tiny recipe) without and with median pruning, side by side;
and the data stages' share of a sweep (one listing, one decode for every trial)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import Context, result
from skin.data.sample_data import write_sample_dataset
from skin.data.synthetic import class_counts
from tests.recipes import TINY

NAME = "sweep"
REPO = Path(__file__).resolve().parents[1]
TRIALS = 8
SPACE = {
    "sampler": "tpe",  # its first 10 trials are seeded random draws: both sides try the same 8
    "seed": 0,
    "train.lr": {"type": "float", "low": 1.0e-6, "high": 1.0e-2, "log": True},
    "train.weight_decay": {"type": "float", "low": 1.0e-6, "high": 1.0e-2, "log": True},
}
# The shipped space file's pruner (configs/sweep.yaml): what a user gets without tuning it.
PRUNED = yaml.safe_load((REPO / "configs" / "sweep.yaml").read_text())["pruner"]
SCRIPT = """
import json, sys
from flows.sweep import sweep_flow
space, data, overrides = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
r = sweep_flow(space_path=space, trials=int(sys.argv[4]), name="bench", data_uri=data,
               overrides=overrides, register_best=False)
decodes = [r["stages"].get("prepare-images")] + [t["stages"].get("prepare-images") for t in r["ran"]]
print("RESULT " + json.dumps({
    "seconds": r["seconds"], "data_seconds": r["data_seconds"], "stages": r["stages"],
    "best": r["best"]["value"] if r["best"] else None,
    "states": [t["state"] for t in r["trials"]], "decodes": decodes,
    "by_trial": sorted([t["number"], t["state"], t["value"]] for t in r["trials"]),
}))
"""


def sweep_process(work: Path, data: Path, pruner: Any, epochs: int) -> dict[str, Any]:
    """One fresh `python` process (own Prefect home, MLflow and study) running the sweep."""
    work.mkdir(parents=True)
    space = work / "space.yaml"
    space.write_text(yaml.safe_dump({**SPACE, "pruner": pruner}))
    overrides = {
        **TINY,
        "train.epochs": epochs,
        "evaluate.bootstrap": 0,
        "work_dir": str(work / "work"),
        "tracking.tracking_uri": f"sqlite:///{work / 'mlflow.db'}",
        "tracking.experiment": "bench-sweep",
    }
    env = {
        **os.environ,
        "PREFECT_HOME": str(work / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "HF_HUB_OFFLINE": "1",
        "MPLBACKEND": "Agg",
        "PYTHONPATH": str(REPO),
    }
    cmd = [sys.executable, "-c", SCRIPT, str(space), str(data), json.dumps(overrides), str(TRIALS)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=3600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"sweep failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    out = json.loads(lines[-1].removeprefix("RESULT "))
    out["wall_s"] = time.perf_counter() - t0
    return out


def run(ctx: Context) -> dict[str, Any]:
    data = ctx.work / "data"
    write_sample_dataset(str(data), class_counts(per_class=40), size=40, seed=1)
    epochs = ctx.pick(6, 10)
    plain = sweep_process(ctx.work / "plain", data, "none", epochs)
    pruned = sweep_process(ctx.work / "pruned", data, PRUNED, epochs)
    return result(
        NAME,
        ctx,
        plain["seconds"],
        pruned["seconds"],
        1.0,
        ratio_note="sweep flow without pruning ÷ with median pruning (the same 8 sampled configs)",
        trials=TRIALS,
        epochs=epochs,
        images=sum(class_counts(per_class=40).values()),
        best_plain=plain["best"],
        best_pruned=pruned["best"],
        trials_plain=plain["by_trial"],
        trials_pruned=pruned["by_trial"],
        trials_note="[number, state, value] per trial; a pruned trial's value is its last"
        " reported epoch's dev balanced accuracy",
        pruned_trials=pruned["states"].count("PRUNED"),
        process_wall_plain_s=round(plain["wall_s"], 1),
        process_wall_pruned_s=round(pruned["wall_s"], 1),
        data_stages_s=round(plain["data_seconds"], 2),
        data_share=round(plain["data_seconds"] / plain["seconds"], 4),
        data_stages=plain["stages"],
        decodes=plain["decodes"],
        decodes_ran=plain["decodes"].count("ran"),
        data_note="data_stages_s: listing, split, undersample and the one decode before the"
        " trials; every trial's decode comes from Prefect's cache (decodes: sweep, then trials)",
        pruner=PRUNED,
        space=SPACE,
    )
