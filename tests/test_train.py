"""Training and evaluation on generated data: it learns, checkpoints every epoch, resumes exactly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from skin import checkpoint as ckpt
from skin import manifest as mf
from skin.datastages import build_manifest, list_images, source_uri
from skin.model import apply_freeze, build_model, is_head_only, train_mode
from skin.pipeline import evaluate_stage, train_stage
from skin.tracking import NullTracker
from skin.weights import WeightsError
from tests.helpers import tiny_config

REPO = Path(__file__).resolve().parents[1]


def make_manifest(tmp_path: Path, data: Path, **extra: object) -> tuple[str, object]:
    cfg = tiny_config(tmp_path, data, **extra)
    df = build_manifest(list_images(cfg.data), source_uri(cfg.data.uri), cfg.split)
    uri = str(tmp_path / "manifest.parquet")
    mf.write(df, uri)
    return uri, cfg


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
    for name in ("confusion_matrix_test.csv", "confusion_matrix_test.png", "per_class_test.csv",
                 "summary.md", "learning_curves.png", "roc_test.png", "reliability_test.png",
                 "misclassified_test.png", "per_class_test.png"):
        assert (report / name).stat().st_size > 0, f"report file {name} missing or empty"
    assert "reduce" in (report / "summary.md").read_text(), "summary gives the notebook's reading"


def _job(manifest: str, work: Path, epochs: int, run_id: str) -> list[str]:
    code = (
        "import sys, json; from tests.helpers import tiny_config; "
        "from skin.pipeline import train_stage; from skin.tracking import NullTracker; "
        f"cfg = tiny_config(__import__('pathlib').Path({str(work)!r}), {manifest!r}, "
        # Augmented (on the device): the resumed run must redraw the very same augmentations.
        f"**{{'train.epochs': {epochs}, 'train.augment.enabled': True}}); "
        f"out = train_stage({manifest!r}, cfg, NullTracker({run_id!r})); "
        "print(json.dumps({'resumed_from': out.resumed_from, 'best': out.best_epoch}))"
    )
    return [sys.executable, "-c", code]


@pytest.mark.slow
def test_sigkill_mid_training_resumes_to_the_same_model(tmp_path: Path, sample_data: Path) -> None:
    uri, _ = make_manifest(tmp_path, sample_data)
    epochs = 6
    # Uninterrupted reference run.
    ref = subprocess.run(_job(uri, tmp_path / "a", epochs, "ref"), cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-2000:]
    # Interrupted run: SIGKILL once epoch 3's checkpoint exists (mid-epoch 4 or so).
    work = tmp_path / "b"
    ckpt_dir = work / "work" / "runs" / "victim" / "checkpoints"
    proc = subprocess.Popen(_job(uri, work, epochs, "victim"), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not (ckpt_dir / "epoch_0003.pt").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
        assert time.monotonic() < deadline, "training never reached epoch 3"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (ckpt_dir / f"epoch_{epochs:04d}.pt").exists(), "killed too late to test a resume"
    last = ckpt.load(ckpt_dir / "last.pt")  # never half-written: loads cleanly
    assert last["epoch"] >= 3
    again = subprocess.run(_job(uri, work, epochs, "victim"), cwd=REPO, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert '"resumed_from": ' + str(last["epoch"]) in again.stdout, again.stdout
    a = ckpt.load(tmp_path / "a" / "work" / "runs" / "ref" / "checkpoints" / "last.pt")["model"]
    b = ckpt.load(ckpt_dir / "last.pt")["model"]
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-5), f"{key} differs"


def test_head_freeze_keeps_batchnorm_statistics_frozen() -> None:
    model = build_model("test_efficientnet", 8, pretrained=False)
    apply_freeze(model, "head")
    assert is_head_only(model), "only the classifier may train"
    before = {k: v.clone() for k, v in model.state_dict().items() if "running_mean" in k}
    train_mode(model)
    with torch.no_grad():
        model(torch.randn(4, 3, 32, 32) * 3 + 1)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "frozen BN statistics drifted"
    apply_freeze(model, "last:1")
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert "blocks" in trainable and "conv_stem" not in trainable, trainable
    apply_freeze(model, "none")
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.slow
def test_feature_path_trains_the_same_head_as_the_image_path(
    tmp_path: Path, sample_data: Path
) -> None:
    """Head-only on cached features is the notebook's loop without BN drift, only faster."""
    uri, _ = make_manifest(tmp_path, sample_data)
    common = {"model.freeze": "head", "train.epochs": 2, "train.lr": 0.01}
    heads = []
    for feature_cache in (True, False):
        cfg = tiny_config(tmp_path / str(feature_cache), sample_data, **common,
                          **{"train.feature_cache": feature_cache})
        out = train_stage(uri, cfg, NullTracker(f"fc{feature_cache}"))
        assert out.feature_path is feature_cache
        state = ckpt.load(out.best_checkpoint)["model"]
        heads.append({k: v for k, v in state.items() if k.startswith("fc.")})
    for key in heads[0]:
        assert torch.allclose(heads[0][key], heads[1][key], atol=1e-4), f"{key} differs"


def test_missing_pretrained_weights_give_a_clear_error() -> None:
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    with pytest.raises(WeightsError, match="--no-pretrained"):
        build_model("resnet18", 8, pretrained=True)
    with pytest.raises(WeightsError, match="--weights FILE"):
        build_model("resnet18", 8, weights="/nonexistent/weights.pth")


def test_checkpoint_carrying_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (marker.touch, ())

    path = tmp_path / "evil.pt"
    torch.save({"format": 1, "model": Evil()}, path)
    with pytest.raises(ckpt.CheckpointError, match="not a plain-tensor checkpoint"):
        ckpt.load(path)
    assert not marker.exists(), "loading a checkpoint must never run its code"


def test_retention_keeps_the_best_and_the_newest(tmp_path: Path) -> None:
    for epoch, best in ((1, True), (2, False), (3, False), (4, False)):
        ckpt.save(tmp_path, epoch, {"model": {"w": torch.tensor([float(epoch)])}}, is_best=best,
                  keep=2)
    names = sorted(p.name for p in ckpt.listed(tmp_path))
    assert names == ["epoch_0001.pt", "epoch_0003.pt", "epoch_0004.pt"], names
    assert ckpt.load(tmp_path / "best.pt")["epoch"] == 1
    assert ckpt.load(tmp_path / "last.pt")["epoch"] == 4
    assert not list(tmp_path.glob(".*.tmp")), "no temp files left behind"
    assert np.isclose(float(ckpt.load(tmp_path / "last.pt")["model"]["w"]), 4.0)
