"""Distributed training with torchrun: the per-process entry point, and `launch` to start N of them.

    torchrun --standalone --nproc_per_node 4 -m skin.train.launch --manifest URI --config CFG.yaml \\
        [--run-id ID] [--tracking]

Every process runs `train_stage` on the same manifest and config; rank 0 records into the MLflow
run (`--tracking`) and writes the run folder, which must be on a filesystem all ranks share.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Sequence

from torch.distributed.elastic.multiprocessing.errors import record

from skin.base.config import PipelineConfig, config_to_yaml, load_config
from skin.base.runs import RunPaths
from skin.track.tracking import MLflowTracker, NullTracker, Tracker, tracked_run
from skin.train import distributed
from skin.train.loop import pick_device
from skin.train.stage import TrainOutcome, train_stage

log = logging.getLogger(__name__)
TAIL_CHARS = 4000


class LaunchError(RuntimeError):
    """torchrun exited with an error; the message carries the end of its output and the log."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m skin.train.launch", description=__doc__)
    p.add_argument("--manifest", required=True, help="manifest URI (the split stage's output)")
    p.add_argument("--config", required=True, help="resolved pipeline config (YAML)")
    p.add_argument("--run-id", help="run to train or resume (default: a new one, from rank 0)")
    p.add_argument("--tracking", action="store_true", help="rank 0 records into MLflow")
    return p


def _open_tracker(cfg: PipelineConfig, run_id: str | None, tracking: bool) -> Tracker:
    """Rank 0 opens (or reopens) the run; the others learn its id from rank 0."""
    tracker: Tracker | None = None
    if distributed.current().is_main:
        if tracking:
            tracker = MLflowTracker(cfg.tracking.tracking_uri, cfg.tracking.experiment, run_id)
        else:
            tracker = NullTracker(run_id or uuid.uuid4().hex)
    shared = distributed.broadcast_text(tracker.run_id if tracker is not None else None)
    return tracker if tracker is not None else NullTracker(shared)


@record  # torchrun's failure summary then carries the worker's traceback
def main(argv: Sequence[str] | None = None) -> int:
    """One torchrun worker: join the group, train, close the run on rank 0, leave the group."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format=f"[rank {os.environ.get('RANK', '0')}] %(name)s: %(message)s"
    )
    cfg = load_config(args.config)
    distributed.init_from_env(pick_device(cfg.train.device).type)
    tracker = _open_tracker(cfg, args.run_id, args.tracking)
    try:
        with tracked_run(tracker):
            outcome = train_stage(args.manifest, cfg, tracker)
    finally:
        distributed.shutdown()
    log.info("run %s: best epoch %d of %d", outcome.run_id, outcome.best_epoch, outcome.last_epoch)
    return 0


def launch(
    manifest_uri: str,
    cfg: PipelineConfig,
    run_id: str,
    nproc: int,
    tracking: bool = False,
) -> TrainOutcome:
    """Train with `nproc` local processes under torchrun and return rank 0's outcome.

    The config travels as YAML in the run folder; torchrun's output goes to `launch.log` there.
    With `tracking`, rank 0 reopens MLflow run `run_id` (the caller's open run).
    """
    paths = RunPaths(cfg.work_dir, run_id)
    paths.root.mkdir(parents=True, exist_ok=True)
    cfg_path = paths.launch_config
    cfg_path.write_text(config_to_yaml(cfg))
    outcome_path = paths.outcome
    outcome_path.unlink(missing_ok=True)  # a stale outcome must never pass for this run's
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        "--nproc_per_node", str(nproc),
        "-m", "skin.train.launch",
        "--manifest", manifest_uri, "--config", str(cfg_path), "--run-id", run_id,
    ]  # fmt: skip
    if tracking:
        cmd.append("--tracking")
    log_path = paths.launch_log
    log.info("launching %d training processes; output in %s", nproc, log_path)
    with log_path.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        try:
            rc = proc.wait()
        except BaseException:  # cancelled: torchrun forwards SIGTERM to its workers
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    if rc != 0:
        tail = log_path.read_text(errors="replace")[-TAIL_CHARS:]
        raise LaunchError(f"torchrun ({nproc} processes) exited with {rc}; log {log_path}:\n{tail}")
    if not outcome_path.is_file():
        raise LaunchError(f"torchrun finished but rank 0 wrote no {outcome_path}; see {log_path}")
    return TrainOutcome(**json.loads(outcome_path.read_text()))


if __name__ == "__main__":
    sys.exit(main())
