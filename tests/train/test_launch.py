"""skin.train.launch: how torchrun is started, what its failures say, and what rank 0 hands back.

torchrun itself is replaced by a small Python child (the real multi-process run is in
tests/train/test_distributed.py): these tests pin the launcher's own contract around it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pytest

from skin.base.config import load_config
from skin.base.runs import RunPaths
from skin.track.tracking import NullTracker
from skin.train import launch as launcher
from skin.train.launch import TAIL_CHARS, LaunchError, _open_tracker, _parser, launch
from skin.train.stage import TrainOutcome
from tests.recipes import TINY


def outcome(run_dir: Path) -> TrainOutcome:
    return TrainOutcome(
        run_id="r1",
        run_dir=str(run_dir),
        best_checkpoint=str(run_dir / "checkpoints" / "best.pt"),
        best_epoch=2,
        last_epoch=3,
        resumed_from=None,
        stopped_early=False,
        feature_path=True,
        bad_images=0,
        history=[{"epoch": 1.0, "dev_loss": 0.5}],
    )


class Child:
    """Stands in for torchrun: records the command, runs `script` in its place."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, script: str, cancel: bool = False) -> None:
        self.cmd: list[str] = []
        self.proc: subprocess.Popen | None = None
        child = self

        class Popen(subprocess.Popen):
            def __init__(self, cmd: list[str], **kwargs: object) -> None:
                child.cmd, child.proc = cmd, self
                self.cancelled = False
                super().__init__([sys.executable, "-c", script], **kwargs)  # type: ignore[call-overload]

            def wait(self, timeout: float | None = None) -> int:
                if cancel and not self.cancelled:
                    self.cancelled = True
                    raise KeyboardInterrupt  # the flow is cancelled while torchrun runs
                return super().wait(timeout)

        fake = SimpleNamespace(
            Popen=Popen, STDOUT=subprocess.STDOUT, TimeoutExpired=subprocess.TimeoutExpired
        )
        monkeypatch.setattr(launcher, "subprocess", fake)


@pytest.fixture
def cfg(tmp_path: Path):
    return load_config(None, {**TINY, "work_dir": str(tmp_path / "work")})


def test_the_command_is_torchrun_on_this_module_with_the_runs_own_config(
    monkeypatch: pytest.MonkeyPatch, cfg
) -> None:
    paths = RunPaths(cfg.work_dir, "r1")
    done = json.dumps(asdict(outcome(paths.root)))
    child = Child(monkeypatch, f"open({str(paths.outcome)!r}, 'w').write({done!r})")
    got = launch("s3://b/manifest.parquet", cfg, "r1", nproc=3, tracking=True)
    assert got == outcome(paths.root), "rank 0's outcome file, read back"
    cmd = child.cmd
    assert cmd[:4] == [sys.executable, "-m", "torch.distributed.run", "--standalone"], cmd
    assert cmd[cmd.index("--nproc_per_node") + 1] == "3"
    assert cmd[cmd.index("-m", 2) + 1] == "skin.train.launch"
    assert cmd[cmd.index("--manifest") + 1] == "s3://b/manifest.parquet"
    assert cmd[cmd.index("--config") + 1] == str(paths.launch_config)
    assert cmd[cmd.index("--run-id") + 1] == "r1" and cmd[-1] == "--tracking"
    assert load_config(str(paths.launch_config)) == cfg, "the config travels whole as YAML"


def test_without_tracking_no_flag_is_passed(monkeypatch: pytest.MonkeyPatch, cfg) -> None:
    paths = RunPaths(cfg.work_dir, "r2")
    done = json.dumps(asdict(outcome(paths.root)))
    child = Child(monkeypatch, f"open({str(paths.outcome)!r}, 'w').write({done!r})")
    launch("m.parquet", cfg, "r2", nproc=1)
    assert "--tracking" not in child.cmd


def test_a_failed_run_raises_with_the_end_of_its_log(monkeypatch: pytest.MonkeyPatch, cfg) -> None:
    script = "print('x' * 9000); print('worker 1 failed: CUDA out of memory'); raise SystemExit(3)"
    Child(monkeypatch, script)
    with pytest.raises(LaunchError, match=r"torchrun \(2 processes\) exited with 3") as info:
        launch("m.parquet", cfg, "r3", nproc=2)
    message = str(info.value)
    assert "worker 1 failed: CUDA out of memory" in message, "the cause is in the message"
    assert len(message) < TAIL_CHARS + 500, "only the end of a long log"
    log = RunPaths(cfg.work_dir, "r3").launch_log
    assert str(log) in message and "CUDA out of memory" in log.read_text(), "the whole log kept"


def test_a_stale_outcome_never_passes_for_this_run(monkeypatch: pytest.MonkeyPatch, cfg) -> None:
    paths = RunPaths(cfg.work_dir, "r4")
    paths.root.mkdir(parents=True)
    paths.outcome.write_text(json.dumps(asdict(outcome(paths.root))))  # an earlier attempt's
    Child(monkeypatch, "print('exited cleanly, wrote nothing')")
    with pytest.raises(LaunchError, match=r"rank 0 wrote no .*train_outcome\.json"):
        launch("m.parquet", cfg, "r4", nproc=2)


def test_a_cancelled_launch_stops_torchrun(monkeypatch: pytest.MonkeyPatch, cfg) -> None:
    child = Child(monkeypatch, "import time; time.sleep(60)", cancel=True)
    with pytest.raises(KeyboardInterrupt):
        launch("m.parquet", cfg, "r5", nproc=2)
    assert child.proc is not None and child.proc.returncode is not None, "torchrun is stopped"
    assert child.proc.returncode < 0, "by a signal, not left to finish"


def test_the_worker_entry_point_requires_manifest_and_config() -> None:
    args = _parser().parse_args(["--manifest", "m.parquet", "--config", "c.yaml"])
    assert (args.manifest, args.config, args.run_id, args.tracking) == (
        "m.parquet",
        "c.yaml",
        None,
        False,
    )
    with pytest.raises(SystemExit):
        _parser().parse_args(["--config", "c.yaml"])


def test_a_single_process_keeps_the_given_run_id_or_makes_one(cfg) -> None:
    given = _open_tracker(cfg, "abc", tracking=False)
    assert isinstance(given, NullTracker) and given.run_id == "abc"
    fresh = [_open_tracker(cfg, None, tracking=False).run_id for _ in range(2)]
    assert all(len(r) == 32 for r in fresh) and fresh[0] != fresh[1], fresh
