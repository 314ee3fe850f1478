"""GPU check in one short script: fine-tuning images/s with our loader vs pure model throughput.

Run from the repository root on a GPU machine: `python -m benchmarks.gpu` (about 2–4 minutes on
an H100 with 16 cores); `--dry-run` runs every part on the CPU at toy sizes. Needs torch, timm,
pillow, numpy, pandas, scikit-learn, pyarrow, pyyaml, filelock and pydantic; never imports
prefect, mlflow or boto3. Writes $OUT/gpu.json (default ./gpu-out).
"""

from __future__ import annotations

import sys

for _absent in ("prefect", "mlflow", "boto3", "botocore"):  # fail loudly if anything reaches them
    sys.modules.setdefault(_absent, None)  # type: ignore[arg-type]

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterable  # noqa: E402
from dataclasses import dataclass, replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks.data import isic_like, manifest  # noqa: E402
from skin.base.config import AugmentConfig, load_config  # noqa: E402
from skin.data import manifest as mf  # noqa: E402
from skin.data.imagecache import ImageCache, build_cache  # noqa: E402
from skin.train.augment import BatchAugment  # noqa: E402
from skin.train.datasets import (  # noqa: E402
    EvalImages,
    Normalize,
    TrainImages,
    default_workers,
    make_loader,
    set_epoch,
)
from skin.train.model import InputSpec, build_model, input_spec, train_mode  # noqa: E402

MODELS = ("tf_mixnet_s", "tf_efficientnet_lite0")


@dataclass(frozen=True)
class Plan:
    """Sizes for one run: the real one on a GPU, or a toy one on the CPU."""

    device: torch.device
    images: int
    source: tuple[int, int]
    image_size: int
    batch: int
    warmup: int
    steps: int
    head_epochs: int


REAL = Plan(torch.device("cuda"), 4096, (1024, 768), 224, 128, 5, 25, 50)
DRY = Plan(torch.device("cpu"), 48, (256, 192), 48, 4, 1, 1, 2)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Step:
    """One full fine-tuning step: uint8 → [augment →] normalise on the device, bf16 autocast,
    channels_last. With `augment`, batches of whole cached images are augmented on the GPU."""

    def __init__(
        self, name: str, spec: InputSpec, device: torch.device, augment: BatchAugment | None = None
    ) -> None:
        self.device, self.augment = device, augment
        self.model = build_model(name, 8, pretrained=False).to(device)
        self.model.to(memory_format=torch.channels_last)
        self.norm = Normalize(spec, channels_last=True).to(device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.loss = nn.CrossEntropyLoss()

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        train_mode(self.model)
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        if self.augment is not None:
            x = self.augment(x)
        x = self.norm(x) if x.dtype == torch.uint8 or self.augment is not None else x
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            loss = self.loss(self.model(x).float(), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


def images_per_s(
    step: Step, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], plan: Plan
) -> float:
    """Steady-state images/s over plan.steps steps after plan.warmup (loader start-up excluded)."""
    it = iter(batches)
    for _ in range(plan.warmup):
        step(*next(it))
    sync(plan.device)
    t0, seen = time.perf_counter(), 0
    for _ in range(plan.steps):
        x, y = next(it)
        step(x, y)
        seen += len(y)
    sync(plan.device)
    return seen / (time.perf_counter() - t0)


def forever(make: Callable[[int], Iterable[Any]]) -> Iterable[Any]:
    """Epoch after epoch of a loader factory (a fresh shuffle each epoch, as training does)."""
    epoch = 0
    while True:
        yield from make(epoch)
        epoch += 1


def throughput(name: str, cache: ImageCache, labels: np.ndarray, plan: Plan) -> dict[str, float]:
    spec = input_spec(build_model(name, 8, pretrained=False), plan.image_size)
    step = Step(name, spec, plan.device)
    x = torch.randn(plan.batch, 3, spec.size, spec.size, device=plan.device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 8, (plan.batch,), device=plan.device)
    pure = images_per_s(step, forever(lambda _e: [(x, y)]), plan)
    rows = np.arange(len(labels))
    workers = default_workers(False, plan.device)  # what train_stage picks for these paths
    pin = plan.device.type == "cuda"
    aug_cfg = AugmentConfig(enabled=True)
    per_image = TrainImages(cache, rows, labels, spec.size, aug_cfg)
    whole = EvalImages(cache, rows, labels, cache.size)
    plain = EvalImages(cache, rows, labels, spec.size)
    gpu_aug = Step(name, spec, plan.device, BatchAugment(aug_cfg, spec.size))
    gpu_aug.model, gpu_aug.opt = step.model, step.opt  # the same model for every feed

    def loader(ds, n: int) -> Callable[[int], Iterable[Any]]:
        """Epoch e's batches, as train_stage makes them: workers that only read persist across
        epochs; the per-image path (random in its workers) gets fresh workers each epoch."""
        kw = {"batch_size": plan.batch, "shuffle": True, "seed": 0, "num_workers": n,
              "pin_memory": pin}  # fmt: skip
        if n and ds is not per_image:
            kept = make_loader(ds, epoch=0, persistent=True, **kw)
            return lambda e: set_epoch(kept, e)
        return lambda e: make_loader(ds, epoch=e, **kw)

    augmented = images_per_s(gpu_aug, forever(loader(whole, workers)), plan)
    batched = images_per_s(step, forever(loader(plain, workers)), plan)
    inline = images_per_s(step, forever(loader(plain, 0)), plan)
    per_image_rate = images_per_s(step, forever(loader(per_image, workers)), plan)
    return {
        "pure_model_img_s": round(pure, 1),
        "loader_augmented_img_s": round(augmented, 1),
        "loader_plain_img_s": round(batched, 1),
        "loader_plain_no_workers_img_s": round(inline, 1),
        "loader_augmented_per_image_workers_img_s": round(per_image_rate, 1),
        "ratio_augmented": round(augmented / pure, 3),
        "ratio_plain": round(batched / pure, 3),
        "ratio_plain_no_workers": round(inline / pure, 3),
        "ratio_augmented_per_image_workers": round(per_image_rate / pure, 3),
        "loader_workers": workers,
        "augmentation": "batched on the GPU (skin.train.augment) from pinned uint8 batches",
    }


def head_only(folder: Path, work: Path, plan: Plan) -> dict[str, Any]:
    """The notebook recipe through skin.train.stage.train_stage (features once, head 50 epochs)."""
    from skin.track.tracking import NullTracker
    from skin.train.stage import train_stage

    m = manifest(str(folder))
    uri = str(work / "head-manifest.parquet")
    mf.write(m, uri)
    cfg = load_config(
        None,
        {
            "data.uri": str(folder),
            "model.name": "tf_mixnet_s",
            "model.pretrained": False,
            "model.freeze": "head",
            "train.epochs": plan.head_epochs,
            "train.batch_size": 128,
            "train.image_size": plan.image_size,
            "train.device": plan.device.type,
            "train.keep_checkpoints": 1,
            "work_dir": str(work / "head"),
        },
    )
    t0 = time.perf_counter()
    out = train_stage(uri, cfg, NullTracker("gpu-head-only"))
    wall = time.perf_counter() - t0
    report = {
        "images": len(m),
        "epochs": plan.head_epochs,
        "wall_s": round(wall, 2),
        "feature_path": out.feature_path,
        "head_epoch_s": round(float(np.mean([h["seconds"] for h in out.history])), 4),
        "last_dev_balanced_accuracy": round(out.history[-1]["dev_balanced_accuracy"], 4),
    }
    # The notebook's loop on the same split, with its model on the GPU (which the notebook never
    # did: a kinder baseline than the original): PIL decode into float tensors, frozen backbone
    # forward on every image every epoch, dev accuracy every epoch, fp32.
    from benchmarks.head_only import notebook

    base = notebook(mf.read(uri), folder, cfg, device=plan.device)
    report["notebook_on_gpu_s"] = round(base["seconds"], 2)
    report["ratio_vs_notebook_on_gpu"] = round(base["seconds"] / wall, 2)
    return report


def train_stage_rate(folder: Path, work: Path, plan: Plan) -> dict[str, Any]:
    """The real training loop (`train_stage`: augmentation on the GPU, 8 workers, AMP,
    channels_last, dev scoring each epoch): train images/s per epoch after the first."""
    from skin.track.tracking import NullTracker
    from skin.train.stage import train_stage

    m = manifest(str(folder))
    uri = str(work / "fit-manifest.parquet")
    mf.write(m, uri)
    overrides = {
        "data.uri": str(folder),
        "model.name": "tf_efficientnet_lite0",
        "model.pretrained": False,
        "model.freeze": "none",
        "train.epochs": 4,
        "train.batch_size": plan.batch,
        "train.image_size": plan.image_size,
        "train.device": plan.device.type,
        "train.augment.enabled": True,
        "train.keep_checkpoints": 1,
        "work_dir": str(work / "fit"),
    }
    out = train_stage(uri, load_config(None, overrides), NullTracker("gpu-fit"))
    n_train = int((m["split"] == "train").sum())
    later = [h["seconds"] for h in out.history[1:]]
    return {
        "model": "tf_efficientnet_lite0",
        "train_images": n_train,
        "epoch_s": [round(h["seconds"], 2) for h in out.history],
        "train_img_s_incl_dev_and_checkpoint": round(n_train / float(np.mean(later)), 1),
    }


def machine(plan: Plan) -> dict[str, Any]:
    gpu = torch.cuda.get_device_name(0) if plan.device.type == "cuda" else None
    return {
        "gpu": gpu,
        "cpus": len(os.sched_getaffinity(0)),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU")
    parser.add_argument(
        "--skip-head-only", action="store_true", help="leave out the slow head-only comparison"
    )
    parser.add_argument(
        "--throughput-only", action="store_true", help="only the loader throughputs"
    )
    parser.add_argument("--images", type=int, default=None, help="images to generate")
    args = parser.parse_args(argv)
    plan = DRY if args.dry_run else REAL
    if args.images:
        plan = replace(plan, images=args.images)
    if plan.device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: use --dry-run to check the script on a CPU")
    out_dir = Path(os.environ.get("OUT", "gpu-out"))
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.backends.cudnn.benchmark = True
    t0 = time.perf_counter()
    folder = isic_like(plan.images, *plan.source)
    m = manifest(str(folder))
    labels = m["label"].map({c: i for i, c in enumerate(sorted(set(m["label"])))}).to_numpy()
    report: dict[str, Any] = {
        "plan": {k: str(v) for k, v in plan.__dict__.items()},
        "machine": machine(plan),
        "data_s": round(time.perf_counter() - t0, 1),
    }
    with tempfile.TemporaryDirectory(prefix="skin-gpu-") as tmp:
        size = input_spec(build_model(MODELS[0], 8, pretrained=False), plan.image_size).cache_size
        t1 = time.perf_counter()
        cache = build_cache(m, size, Path(tmp) / "cache")
        report["decode"] = {"images": len(m), "seconds": round(time.perf_counter() - t1, 2)}
        for name in MODELS:
            report[name] = throughput(name, cache, labels, plan)
            print(name, report[name], flush=True)
        if not args.throughput_only:
            report["train_stage"] = train_stage_rate(folder, Path(tmp), plan)
            print("train_stage", report["train_stage"], flush=True)
        if not (args.skip_head_only or args.throughput_only):
            report["head_only"] = head_only(folder, Path(tmp), plan)
    report["total_s"] = round(time.perf_counter() - t0, 1)
    name = "gpu-dry-run.json" if args.dry_run else "gpu.json"
    (out_dir / name).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
