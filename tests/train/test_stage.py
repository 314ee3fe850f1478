"""The train stage (`train_stage`): on generated data it learns, checkpoints every epoch, resumes
to the same model after a SIGKILL, trains the same head on cached features, and carries every
train setting to the loop."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from skin.evaluate.stage import evaluate_stage
from skin.track.tracking import NullTracker
from skin.train import checkpoint as ckpt
from skin.train.loop import CRASH_AFTER_EPOCH
from skin.train.stage import train_stage
from tests.helpers import make_manifest, tiny_config

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_tiny_model_learns_and_reports_everything(tmp_path: Path, sample_data: Path) -> None:
    uri, cfg = make_manifest(tmp_path, sample_data, **{"train.epochs": 12})
    tracker = NullTracker("learns")
    out = train_stage(uri, cfg, tracker)
    assert not out.feature_path, "a full fine-tune trains on images"
    files = sorted(p.name for p in (Path(out.run_dir) / "checkpoints").iterdir())
    epochs = [f for f in files if f.startswith("epoch_")]
    assert epochs == [f"epoch_{e:04d}.pt" for e in range(1, 13)], f"one per epoch: {files}"
    assert {"last.pt", "best.pt"} <= set(files), files
    assert ckpt.load(Path(out.run_dir) / "checkpoints" / "best.pt")["epoch"] == out.best_epoch
    history = out.history
    assert [h["epoch"] for h in history] == list(range(1, 13)), "one history row per epoch"
    assert history[-1]["train_loss"] < history[0]["train_loss"] / 2, "training loss must fall"

    ev = evaluate_stage(uri, out.best_checkpoint, cfg, tracker)
    m = ev.metrics
    assert m["test_balanced_accuracy"] > 0.5, f"chance is 0.125; got {m['test_balanced_accuracy']}"
    assert m["bias"] + m["train_accuracy"] == pytest.approx(0.90), "bias = human − train"
    assert m["variance"] == pytest.approx(m["train_accuracy"] - m["dev_accuracy"])
    assert m["variance_test"] == pytest.approx(m["train_accuracy"] - m["test_accuracy"])
    for name in ("test_recall_MEL", "test_precision_NV", "test_f1_DF", "dev_macro_auc", "test_ece"):
        assert name in m, f"{name} missing from {sorted(m)[:10]}…"
    report = Path(ev.report_dir)
    for name in (
        "confusion_matrix_test.csv",
        "confusion_matrix_test.png",
        "per_class_test.csv",
        "summary.md",
        "learning_curves.png",
        "roc_test.png",
        "reliability_test.png",
        "misclassified_test.png",
        "per_class_test.png",
    ):
        assert (report / name).stat().st_size > 0, f"report file {name} missing or empty"
    assert "reduce" in (report / "summary.md").read_text(), "summary gives the notebook's reading"


def _job(manifest: str, work: Path, epochs: int, run_id: str) -> list[str]:
    code = (
        "import sys, json; from tests.helpers import make_manifest, tiny_config; "
        "from skin.train.stage import train_stage; from skin.track.tracking import NullTracker; "
        f"cfg = tiny_config(__import__('pathlib').Path({str(work)!r}), {manifest!r}, "
        # Augmented (on the device): the resumed run must redraw the very same augmentations.
        f"**{{'train.epochs': {epochs}, 'train.augment.enabled': True}}); "
        f"out = train_stage({manifest!r}, cfg, NullTracker({run_id!r})); "
        "print(json.dumps({'resumed_from': out.resumed_from, 'best': out.best_epoch}))"
    )
    return [sys.executable, "-c", code]


def _run(args: list[str], log: Path, crash_after: int | None = None) -> int:
    """Run a training job in its own session; its return code (negative: killed by a signal)."""
    env = {k: v for k, v in os.environ.items() if k != CRASH_AFTER_EPOCH}
    if crash_after is not None:
        env[CRASH_AFTER_EPOCH] = str(crash_after)
    with log.open("w") as out:
        proc = subprocess.Popen(
            args, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            return proc.wait(timeout=300)
        finally:  # loader workers a killed job left behind
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.slow
def test_sigkill_mid_training_resumes_to_the_same_model(tmp_path: Path, sample_data: Path) -> None:
    uri, _ = make_manifest(tmp_path, sample_data)
    epochs = 6
    ref_log = tmp_path / "ref.log"
    assert _run(_job(uri, tmp_path / "a", epochs, "ref"), ref_log) == 0, ref_log.read_text()[-2000:]
    # Interrupted run: the test hook SIGKILLs it right after epoch 3's checkpoint is written.
    work, log = tmp_path / "b", tmp_path / "victim.log"
    ckpt_dir = work / "work" / "runs" / "victim" / "checkpoints"
    rc = _run(_job(uri, work, epochs, "victim"), log, crash_after=3)
    assert rc == -signal.SIGKILL, f"the hook must kill the job (rc {rc}): {log.read_text()[-2000:]}"
    kept = [p.name for p in ckpt.listed(ckpt_dir)]
    assert kept == ["epoch_0001.pt", "epoch_0002.pt", "epoch_0003.pt"], kept
    assert ckpt.load(ckpt_dir / "last.pt")["epoch"] == 3  # never half-written: loads cleanly
    assert _run(_job(uri, work, epochs, "victim"), log) == 0, log.read_text()[-2000:]
    assert '"resumed_from": 3' in log.read_text(), log.read_text()[-2000:]
    a = ckpt.load(tmp_path / "a" / "work" / "runs" / "ref" / "checkpoints" / "last.pt")
    b = ckpt.load(ckpt_dir / "last.pt")
    assert a["epoch"] == b["epoch"] == epochs
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), f"{key} differs after the resume"


@pytest.mark.slow
def test_feature_path_trains_the_same_head_as_the_image_path(
    tmp_path: Path, sample_data: Path
) -> None:
    """Head-only on cached features is the notebook's loop without BN drift, only faster."""
    uri, _ = make_manifest(tmp_path, sample_data)
    common = {"model.freeze": "head", "train.epochs": 2, "train.lr": 0.01}
    heads = []
    for feature_cache in (True, False):
        cfg = tiny_config(
            tmp_path / str(feature_cache),
            sample_data,
            **common,
            **{"train.feature_cache": feature_cache},
        )
        out = train_stage(uri, cfg, NullTracker(f"fc{feature_cache}"))
        assert out.feature_path is feature_cache
        state = ckpt.load(out.best_checkpoint)["model"]
        heads.append({k: v for k, v in state.items() if k.startswith("fc.")})
    for key in heads[0]:
        assert torch.allclose(heads[0][key], heads[1][key], atol=1e-4), f"{key} differs"


def test_fit_params_carry_every_train_setting_the_loop_reads() -> None:
    from dataclasses import fields

    from skin.base.config import load_config
    from skin.train.loop import FitParams
    from skin.train.stage import fit_params

    settings = {"epochs": 3, "lr": 0.01, "optimizer": "adamw", "weight_decay": 0.1,
                "scheduler": "cosine", "warmup_epochs": 1, "label_smoothing": 0.1,
                "early_stopping_patience": 2, "keep_checkpoints": 4, "amp": False, "seed": 5,
                "class_weighted_loss": True}  # fmt: skip
    cfg = load_config(None, {f"train.{k}": v for k, v in settings.items()})
    params = fit_params(cfg, np.array([0, 1, 1, 1]), 2)
    for name in {f.name for f in fields(FitParams)} & set(settings):
        assert getattr(params, name) == settings[name], f"{name} reaches the loop"
    assert params.class_weights == (2.0, 2 / 3), "weights: n / (classes × count)"
