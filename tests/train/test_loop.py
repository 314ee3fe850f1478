"""The fit loop: checkpoints every epoch, resumes exactly, picks the best epoch by its metric."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from skin.train import checkpoint as ckpt
from skin.train.loop import CRASH_AFTER_EPOCH, FitParams, Selection, dev_metrics, dev_scores, fit
from skin.train.model import apply_freeze, build_model, is_head_only, train_mode
from skin.train.weights import WeightsError


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
