"""The training loop: per-epoch checkpoints, exact resume, best-by-dev, early stopping, AMP on GPU,
and DistributedDataParallel when torchrun started several processes.

Test hook: with `SKIN_CRASH_AFTER_EPOCH=N` in the environment, the process SIGKILLs itself right
after epoch N's checkpoint is written (fsynced and renamed into place), before that epoch is
tracked: the kill-and-resume tests crash at a known point instead of racing a timer."""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from skin.train import checkpoint as ckpt
from skin.train import distributed

log = logging.getLogger(__name__)

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
CRASH_AFTER_EPOCH = "SKIN_CRASH_AFTER_EPOCH"  # test hook: see the module docstring
EPOCH_SCORES = ("dev_balanced_accuracy", "dev_accuracy", "dev_loss", "train_accuracy", "train_loss")


@dataclass(frozen=True)
class Selection:
    """Which dev metric picks the best epoch, and in which direction it improves."""

    metric: str = "dev_balanced_accuracy"
    higher_is_better: bool = True

    def __post_init__(self) -> None:
        if self.metric not in EPOCH_SCORES:
            raise ValueError(
                f"best-epoch metric {self.metric!r} is not scored each epoch: use one of"
                f" {', '.join(EPOCH_SCORES)}"
            )

    @property
    def worst(self) -> float:
        return -math.inf if self.higher_is_better else math.inf

    def improves(self, score: float, best: float) -> bool:
        return score > best if self.higher_is_better else score < best


@dataclass(frozen=True)
class FitParams:
    """What the loop needs, as explicit values (translated from the config at the boundary)."""

    epochs: int = 50
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    scheduler: str = "none"
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    class_weights: tuple[float, ...] | None = None
    early_stopping_patience: int | None = None
    keep_checkpoints: int | None = None
    amp: bool = True
    seed: int = 42
    best_by: Selection = Selection("dev_balanced_accuracy", higher_is_better=True)


@dataclass
class FitResult:
    """How training went: the best epoch (by FitParams.best_by) and the per-epoch history."""

    best_epoch: int
    best_score: float
    last_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False
    resumed_from: int | None = None


class TrainingStopped(Exception):  # noqa: N818 (a decision, not an error)
    """A caller's `should_stop` ended training after `epoch`; its checkpoint is kept, and the
    MLflow run closes as KILLED (stopped on purpose), not FAILED."""

    run_status = "KILLED"

    def __init__(self, epoch: int, run_id: str) -> None:
        super().__init__(f"training stopped after epoch {epoch} (run {run_id})")
        self.epoch, self.run_id = epoch, run_id


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bf16 where the GPU has it, fp16 otherwise; full precision on CPU (exact resumes there)."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def make_optimizer(params: list[nn.Parameter], p: FitParams) -> torch.optim.Optimizer:
    if p.optimizer == "adam":
        return torch.optim.Adam(params, lr=p.lr, weight_decay=p.weight_decay)
    if p.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=p.lr, weight_decay=p.weight_decay)
    raise ValueError(f"unknown optimizer {p.optimizer!r}: use adam or adamw")


def make_scheduler(
    opt: torch.optim.Optimizer, p: FitParams, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR | None:
    """Per-step cosine decay after a linear warm-up; None keeps the notebook's constant rate."""
    if p.scheduler == "none":
        return None
    total = max(1, p.epochs * steps_per_epoch)
    warm = p.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total - warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def dev_scores(probs: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    """Dev loss, accuracy and balanced accuracy (the model-selection score) of probabilities."""
    from sklearn.metrics import (
        balanced_accuracy_score,  # ~1 s: not for prediction, which needs none
    )

    pred = probs.argmax(1)
    loss = nn.functional.nll_loss(
        torch.log(torch.as_tensor(probs).clamp_min(1e-12)), torch.as_tensor(labels)
    )
    return (
        float(loss),
        float((pred == labels).mean()),
        float(balanced_accuracy_score(labels, pred)),
    )


@torch.no_grad()
def evaluate_batches(
    net: nn.Module,
    batches: Batches,
    prep: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
    dtype: torch.dtype | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities and labels for every batch (net in eval mode)."""
    net.eval()
    probs, labels = [], []
    for x, y in batches:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = net(prep(x.to(device, non_blocking=True)))
        probs.append(torch.softmax(logits.float(), dim=1).cpu())
        labels.append(y)
    return torch.cat(probs).numpy(), torch.cat(labels).numpy()


@dataclass
class Optimisation:
    """What one training step needs besides the model: optimiser, schedule, AMP scaler, loss."""

    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR | None
    scaler: torch.amp.GradScaler
    loss_fn: nn.Module
    dtype: torch.dtype | None

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict() if self.sched is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["optimizer"])
        if self.sched is not None and state.get("scheduler"):
            self.sched.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


def make_optimisation(
    net: nn.Module, params: FitParams, steps_per_epoch: int, device: torch.device
) -> Optimisation:
    trainable = [p for p in net.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("nothing to train: every parameter is frozen")
    opt = make_optimizer(trainable, params)
    dtype = amp_dtype(device, params.amp)
    weight = torch.tensor(params.class_weights, device=device) if params.class_weights else None
    return Optimisation(
        opt=opt,
        sched=make_scheduler(opt, params, steps_per_epoch),
        scaler=torch.amp.GradScaler("cuda", enabled=dtype == torch.float16),
        loss_fn=nn.CrossEntropyLoss(weight=weight, label_smoothing=params.label_smoothing),
        dtype=dtype,
    )


def resume(
    checkpoint_dir: Path, state_module: nn.Module, optim: Optimisation, device: torch.device
) -> FitResult | None:
    """Restore weights, optimiser and history from the `last` checkpoint; None if there is none.

    No RNG state is restored: every epoch reseeds from (seed, epoch, rank), so the state left
    at the end of an epoch is never drawn from, and checkpoints do not carry it."""
    last = checkpoint_dir / "last.pt"
    if not last.exists():
        return None
    state = ckpt.load(last, map_location=device)
    state_module.load_state_dict(state["model"])
    optim.load_state_dict(state)
    log.info("resuming after epoch %d from %s", state["epoch"], last)
    return FitResult(
        best_epoch=state["best_epoch"],
        best_score=state["best_score"],
        last_epoch=state["epoch"],
        history=list(state["history"]),
        resumed_from=state["epoch"],
    )


def wrap_distributed(net: nn.Module, device: torch.device, world: distributed.World) -> nn.Module:
    """`net` in DistributedDataParallel under torchrun; itself in a single process."""
    if not world.distributed:
        return net
    ids = [device.index if device.index is not None else world.local_rank]
    return DistributedDataParallel(net, device_ids=ids if device.type == "cuda" else None)


def stops_early(result: FitResult, patience: int | None) -> bool:
    """True once `patience` epochs in a row have not beaten the best one."""
    return bool(patience) and result.last_epoch - result.best_epoch >= (patience or 0)


def train_epoch(
    net: nn.Module,
    batches: Batches,
    prep: Callable[[torch.Tensor], torch.Tensor],
    optim: Optimisation,
    device: torch.device,
) -> dict[str, float]:
    """One pass over this rank's training batches; loss and accuracy summed over every rank."""
    # Running sums stay on the device: reading them every step would make the host wait
    # for each step to finish, and the GPU would idle while the next batch is queued.
    seen, loss_sum = 0, torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    for x, y in batches:
        x, y = prep(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=optim.dtype, enabled=optim.dtype is not None):
            logits = net(x)
            loss = optim.loss_fn(logits.float(), y)
        optim.opt.zero_grad(set_to_none=True)
        optim.scaler.scale(loss).backward()
        optim.scaler.step(optim.opt)
        optim.scaler.update()
        if optim.sched is not None:
            optim.sched.step()
        seen += len(y)
        loss_sum += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
    loss_sum, correct, seen = distributed.all_sum([float(loss_sum), int(correct), seen], device)
    return {"train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1)}


def dev_metrics(
    dev: tuple[np.ndarray, np.ndarray] | None, device: torch.device
) -> dict[str, float]:
    """Dev metrics on every rank from rank 0's probabilities and labels (None on the others: the
    weights are the same everywhere, so one rank scores)."""
    scores = dev_scores(*dev) if dev is not None else (0.0, 0.0, 0.0)
    loss, accuracy, balanced = distributed.from_main(scores, device)
    return {"dev_loss": loss, "dev_accuracy": accuracy, "dev_balanced_accuracy": balanced}


def record_epoch(
    result: FitResult, epoch: int, metrics: dict[str, float], best_by: Selection
) -> bool:
    """Append the epoch to the history; True (and the new best) if it beats the best so far."""
    score = metrics[best_by.metric]
    is_best = best_by.improves(score, result.best_score)
    if is_best:
        result.best_epoch, result.best_score = epoch, score
    result.history.append({"epoch": epoch, **metrics})
    result.last_epoch = epoch
    return is_best


def epoch_state(
    state_module: nn.Module,
    optim: Optimisation,
    result: FitResult,
    metrics: dict[str, float],
    extra_state: dict[str, Any] | None,
) -> dict[str, Any]:
    """What a checkpoint holds: plain tensors and values that `resume` reads back (or callers)."""
    return {
        "model": state_module.state_dict(),
        **optim.state_dict(),
        "history": result.history,
        "best_epoch": result.best_epoch,
        "best_score": result.best_score,
        "metrics": metrics,
        **(extra_state or {}),
    }


def save_epoch(
    folder: Path, epoch: int, state: dict[str, Any], *, is_best: bool, keep: int | None
) -> None:
    """Checkpoint the epoch (atomically, moving `last` and maybe `best`), then the crash hook."""
    ckpt.save(folder, epoch, state, is_best=is_best, keep=keep)
    if crash_after_epoch() == epoch:
        log.warning("%s=%d: killing this process (a test hook)", CRASH_AFTER_EPOCH, epoch)
        os.kill(os.getpid(), signal.SIGKILL)


def crash_after_epoch() -> int | None:
    """The epoch named by the SKIN_CRASH_AFTER_EPOCH test hook, if it is set."""
    value = os.environ.get(CRASH_AFTER_EPOCH, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError as err:
        raise ValueError(
            f"{CRASH_AFTER_EPOCH}={value!r} is not an epoch number: unset it, or set a whole number"
        ) from err


def log_epoch(epoch: int, epochs: int, metrics: dict[str, float]) -> None:
    log.info(
        "epoch %d/%d train_loss %.4f dev_acc %.4f dev_bacc %.4f (%.1fs)",
        epoch,
        epochs,
        metrics["train_loss"],
        metrics["dev_accuracy"],
        metrics["dev_balanced_accuracy"],
        metrics["seconds"],
    )


def fit(
    net: nn.Module,
    *,
    train_batches: Callable[[int], Batches],
    dev_batches: Callable[[], Batches],
    prep: Callable[[torch.Tensor], torch.Tensor],
    set_train_mode: Callable[[], None],
    train_prep: Callable[[torch.Tensor], torch.Tensor] | None = None,
    state_module: nn.Module,
    params: FitParams,
    steps_per_epoch: int,
    device: torch.device,
    checkpoint_dir: Path,
    extra_state: dict[str, Any] | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> FitResult:
    """Train `net` (the full model, or only its head on cached features) for params.epochs.

    Every epoch ends with an atomic checkpoint of `state_module` (always the full model) plus the
    optimiser, scheduler, scaler and history. If `checkpoint_dir` already holds a `last`
    checkpoint the run resumes after it; batch order and randomness depend only on (seed,
    epoch), so a resumed run ends with the same weights as an uninterrupted one.

    Under torchrun (a process group is up) `net` trains wrapped in DistributedDataParallel and
    `train_batches` must yield this rank's shard. Rank 0 alone scores dev, saves checkpoints and
    calls `on_epoch`; every rank takes its decisions from rank 0's dev scores, and every rank
    resumes from the same `last` checkpoint (so `checkpoint_dir` must be on a shared filesystem).
    """
    world = distributed.current()
    optim = make_optimisation(net, params, steps_per_epoch, device)
    on_epoch = on_epoch if world.is_main else None
    result = resume(checkpoint_dir, state_module, optim, device)
    if result is None:
        result = FitResult(best_epoch=0, best_score=params.best_by.worst, last_epoch=0)
    elif on_epoch is not None and result.history:
        # The crash may have come between the checkpoint and its tracking: record it again.
        on_epoch(result.last_epoch, {k: v for k, v in result.history[-1].items() if k != "epoch"})
    step_net = wrap_distributed(net, device, world)  # after the resume: rank 0 sends its weights

    for epoch in range(result.last_epoch + 1, params.epochs + 1):
        if stops_early(result, params.early_stopping_patience):
            result.stopped_early = True
            break
        # Ranks draw different dropout masks / augmentations; rank 0 as a single process would.
        seed_everything(params.seed * 1000 + epoch + world.rank * 1_000_003)
        t0 = time.perf_counter()
        set_train_mode()
        metrics = train_epoch(step_net, train_batches(epoch), train_prep or prep, optim, device)
        dev = (
            evaluate_batches(net, dev_batches(), prep, device, optim.dtype)
            if world.is_main
            else None
        )
        metrics |= dev_metrics(dev, device)
        metrics |= {"lr": optim.opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}
        is_best = record_epoch(result, epoch, metrics, params.best_by)
        if world.is_main:
            state = epoch_state(state_module, optim, result, metrics, extra_state)
            save_epoch(checkpoint_dir, epoch, state, is_best=is_best, keep=params.keep_checkpoints)
        distributed.barrier()  # the other ranks wait for rank 0's checkpoint: a resume finds it whole
        if world.is_main:
            log_epoch(epoch, params.epochs, metrics)
        if on_epoch is not None:
            on_epoch(epoch, metrics)
    return result
