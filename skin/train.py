"""The training loop: per-epoch checkpoints, exact resume, best-by-dev, early stopping, AMP on GPU,
and DistributedDataParallel when torchrun started several processes."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from skin import checkpoint as ckpt
from skin import distributed

log = logging.getLogger(__name__)

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


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


@dataclass
class FitResult:
    """How training went: the best epoch by dev balanced accuracy and the per-epoch history."""

    best_epoch: int
    best_score: float
    last_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False
    resumed_from: int | None = None


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


def dev_scores(
    net: nn.Module,
    batches: Batches,
    prep: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
    dtype: torch.dtype | None,
) -> tuple[float, float, float]:
    """Dev loss, accuracy and balanced accuracy (the model-selection score)."""
    probs, labels = evaluate_batches(net, batches, prep, device, dtype)
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
    train_prep = train_prep or prep  # e.g. batched augmentation, then the same normalisation
    trainable = [p for p in net.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("nothing to train: every parameter is frozen")
    opt = make_optimizer(trainable, params)
    sched = make_scheduler(opt, params, steps_per_epoch)
    dtype = amp_dtype(device, params.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    weight = torch.tensor(params.class_weights, device=device) if params.class_weights else None
    loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=params.label_smoothing)

    on_epoch = on_epoch if world.is_main else None
    result = FitResult(best_epoch=0, best_score=-1.0, last_epoch=0)
    start = 1
    last = checkpoint_dir / "last.pt"
    if last.exists():
        state = ckpt.load(last, map_location=device)
        state_module.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if sched is not None and state.get("scheduler"):
            sched.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        result.history = list(state["history"])
        result.best_epoch, result.best_score = state["best_epoch"], state["best_score"]
        result.last_epoch = start = state["epoch"]
        start += 1
        result.resumed_from = state["epoch"]
        log.info("resuming after epoch %d from %s", state["epoch"], last)
        if on_epoch is not None and result.history:
            # The crash may have come between the checkpoint and its tracking: record it again.
            on_epoch(state["epoch"], {k: v for k, v in result.history[-1].items() if k != "epoch"})
    # Wrapped after the resume, so DDP's initial broadcast from rank 0 sends the restored weights.
    step_net: nn.Module = net
    if world.distributed:
        ids = [device.index if device.index is not None else world.local_rank]
        step_net = DistributedDataParallel(net, device_ids=ids if device.type == "cuda" else None)

    since_best = result.last_epoch - result.best_epoch
    for epoch in range(start, params.epochs + 1):
        if params.early_stopping_patience and since_best >= params.early_stopping_patience:
            result.stopped_early = True
            break
        # Ranks draw different dropout masks / augmentations; rank 0 as a single process would.
        seed_everything(params.seed * 1000 + epoch + world.rank * 1_000_003)
        t0 = time.perf_counter()
        set_train_mode()
        # Running sums stay on the device: reading them every step would make the host wait
        # for each step to finish, and the GPU would idle while the next batch is queued.
        seen, loss_sum = 0, torch.zeros((), device=device, dtype=torch.float64)
        correct = torch.zeros((), device=device, dtype=torch.long)
        for x, y in train_batches(epoch):
            x, y = train_prep(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = step_net(x)
                loss = loss_fn(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            if sched is not None:
                sched.step()
            seen += len(y)
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
        loss_sum, correct, seen = distributed.all_sum([float(loss_sum), int(correct), seen], device)
        dev = (0.0, 0.0, 0.0)
        if world.is_main:  # the weights are the same on every rank: one scoring is enough
            dev = dev_scores(net, dev_batches(), prep, device, dtype)
        dev_loss, dev_accuracy, dev_bacc = distributed.from_main(dev, device)
        metrics = {
            "train_loss": loss_sum / max(seen, 1),
            "train_accuracy": correct / max(seen, 1),
            "dev_loss": dev_loss,
            "dev_accuracy": dev_accuracy,
            "dev_balanced_accuracy": dev_bacc,
            "lr": opt.param_groups[0]["lr"],
            "seconds": time.perf_counter() - t0,
        }
        is_best = metrics["dev_balanced_accuracy"] > result.best_score
        if is_best:
            result.best_epoch, result.best_score = epoch, metrics["dev_balanced_accuracy"]
            since_best = 0
        else:
            since_best += 1
        result.history.append({"epoch": epoch, **metrics})
        result.last_epoch = epoch
        if not world.is_main:
            distributed.barrier()  # wait for rank 0's checkpoint: a resume then finds it whole
            continue
        ckpt.save(
            checkpoint_dir,
            epoch,
            {
                "model": state_module.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict() if sched is not None else None,
                "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                "history": result.history,
                "best_epoch": result.best_epoch,
                "best_score": result.best_score,
                "metrics": metrics,
                "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
                **(extra_state or {}),
            },
            is_best=is_best,
            keep=params.keep_checkpoints,
        )
        distributed.barrier()
        log.info(
            "epoch %d/%d train_loss %.4f dev_acc %.4f dev_bacc %.4f (%.1fs)",
            epoch,
            params.epochs,
            metrics["train_loss"],
            metrics["dev_accuracy"],
            metrics["dev_balanced_accuracy"],
            metrics["seconds"],
        )
        if on_epoch is not None:
            on_epoch(epoch, metrics)
    return result
