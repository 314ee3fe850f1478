"""Training and evaluation on generated data: it learns, checkpoints every epoch, resumes exactly."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from skin.evaluate.stage import evaluate_stage
from skin.track.tracking import NullTracker
from skin.train import checkpoint as ckpt
from skin.train.loop import CRASH_AFTER_EPOCH, FitParams, Selection, dev_metrics, dev_scores, fit
from skin.train.model import apply_freeze, build_model, is_head_only, train_mode
from skin.train.stage import train_stage
from skin.train.weights import WeightsError
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


def _toy_fit(folder: Path, epochs: int, crash_after: int | None = None, **params: object):
    """`fit` on a small MLP with dropout, reshuffled each epoch from the global RNG."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(48, 6, generator=gen), torch.randint(0, 3, (48,), generator=gen)

    def train_batches(epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(48)  # from the global RNG, which fit reseeds every epoch
        return [(x[order[i : i + 16]], y[order[i : i + 16]]) for i in range(0, 48, 16)]

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        if epoch == crash_after:
            raise KeyboardInterrupt(f"crash after epoch {epoch}")

    fit_params = FitParams(
        epochs=epochs,
        lr=0.01,
        optimizer="adamw",
        weight_decay=0.01,
        scheduler="cosine",
        warmup_epochs=1,
        amp=False,
        **params,
    )
    result = fit(
        net,
        train_batches=train_batches,
        dev_batches=lambda: [(x[:24], y[:24])],
        prep=lambda t: t,
        set_train_mode=net.train,
        state_module=net,
        params=fit_params,
        steps_per_epoch=3,
        device=torch.device("cpu"),
        checkpoint_dir=folder,
        on_epoch=on_epoch,
    )
    return net, result


def _without_seconds(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def test_resume_continues_exactly_as_an_uninterrupted_run(tmp_path: Path) -> None:
    ref, ref_result = _toy_fit(tmp_path / "ref", 5)
    with pytest.raises(KeyboardInterrupt):
        _toy_fit(tmp_path / "cut", 5, crash_after=2)
    random.seed(7), np.random.seed(7), torch.manual_seed(7)  # resume in a different RNG state
    net, result = _toy_fit(tmp_path / "cut", 5)
    assert result.resumed_from == 2
    assert _without_seconds(result.history) == _without_seconds(ref_result.history)
    for key, value in ref.state_dict().items():
        assert torch.equal(net.state_dict()[key], value), f"{key} differs after the resume"
    a, b = (ckpt.load(d / "last.pt")["optimizer"] for d in (tmp_path / "ref", tmp_path / "cut"))
    for i, moments in a["state"].items():
        assert all(torch.equal(moments[k], b["state"][i][k]) for k in moments), f"param {i}"


def test_checkpoints_hold_only_what_a_resume_reads(tmp_path: Path) -> None:
    _toy_fit(tmp_path, 1)
    state = ckpt.load(tmp_path / "last.pt")  # weights_only=True: plain tensors and values
    assert set(state) == {
        "format",
        "epoch",
        "model",
        "optimizer",
        "scheduler",
        "scaler",
        "history",
        "best_epoch",
        "best_score",
        "metrics",
    }, sorted(state)


@pytest.mark.parametrize(
    ("metric", "higher"), [("dev_balanced_accuracy", True), ("dev_loss", False)]
)
def test_the_best_epoch_is_chosen_by_the_named_metric_and_direction(
    tmp_path: Path, metric: str, higher: bool
) -> None:
    _, result = _toy_fit(tmp_path, 5, best_by=Selection(metric, higher_is_better=higher))
    scores = [row[metric] for row in result.history]
    best = scores.index(max(scores) if higher else min(scores)) + 1  # the first of equals
    assert result.best_epoch == best, f"{metric} per epoch: {scores}"
    assert result.best_score == scores[best - 1]
    assert ckpt.load(tmp_path / "best.pt")["epoch"] == best


def test_a_best_epoch_metric_that_is_not_scored_is_refused() -> None:
    with pytest.raises(ValueError, match="'dev_f1' is not scored each epoch: use one of dev_bal"):
        Selection("dev_f1", higher_is_better=True)


def test_a_crash_hook_that_names_no_epoch_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CRASH_AFTER_EPOCH, "soon")
    with pytest.raises(ValueError, match=f"{CRASH_AFTER_EPOCH}='soon' is not an epoch number"):
        _toy_fit(tmp_path, 1)


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
        ckpt.save(
            tmp_path, epoch, {"model": {"w": torch.tensor([float(epoch)])}}, is_best=best, keep=2
        )
    names = sorted(p.name for p in ckpt.listed(tmp_path))
    assert names == ["epoch_0001.pt", "epoch_0003.pt", "epoch_0004.pt"], names
    assert ckpt.load(tmp_path / "best.pt")["epoch"] == 1
    assert ckpt.load(tmp_path / "last.pt")["epoch"] == 4
    assert not list(tmp_path.glob(".*.tmp")), "no temp files left behind"
    assert np.isclose(float(ckpt.load(tmp_path / "last.pt")["model"]["w"]), 4.0)


def test_dev_scores_are_the_loss_accuracy_and_balanced_accuracy_of_the_probabilities() -> None:
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7]])
    labels = np.array([0, 0, 0, 1])  # right, right, wrong; right
    loss, accuracy, balanced = dev_scores(probs, labels)
    assert loss == pytest.approx(-np.log([0.9, 0.6, 0.2, 0.7]).mean()), "mean -log p(true class)"
    assert accuracy == pytest.approx(3 / 4) and balanced == pytest.approx((2 / 3 + 1) / 2)
    cpu = torch.device("cpu")
    assert dev_metrics((probs, labels), cpu) == {
        "dev_loss": loss,
        "dev_accuracy": accuracy,
        "dev_balanced_accuracy": balanced,
    }, "one process: its own scores"


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
