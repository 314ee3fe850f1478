"""memory: peak RSS while training, float tensors of every image in RAM vs the uint8 memmap cache.

Each way runs in its own process; the parent reads that child's peak RSS from os.wait4 and the
child samples /proc/self/status for the anonymous part (file-backed memmap pages are clean and
the kernel drops them under pressure, which is why a dataset larger than RAM still trains).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import Context, result
from benchmarks.data import isic_like, manifest

NAME = "memory"
SIZE = 224
BATCH = 32


class Peaks(threading.Thread):
    """Samples this process's anonymous and file-backed resident memory every 20 ms."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.anon = self.file = 0
        self.running = True

    def run(self) -> None:
        while self.running:
            status = _status()
            self.anon = max(self.anon, status.get("RssAnon", 0))
            self.file = max(self.file, status.get("RssFile", 0))
            time.sleep(0.02)


def _status() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, val = line.partition(":")
        if val.strip().endswith("kB"):
            out[key] = int(val.split()[0])
    return out


def child(mode: str, manifest_path: str, root: str, steps: int) -> dict[str, Any]:
    """Hold the data the given way, then one epoch of batches, the first `steps` of them trained
    (head only, as the notebook recipe)."""
    import pandas as pd
    import torch

    from skin.base.config import load_config
    from skin.train.stage import make_model

    peaks = Peaks()
    peaks.start()
    t0 = time.perf_counter()
    m = pd.read_parquet(manifest_path)  # every split, as the notebook held them all
    cfg = load_config(None, {"model.pretrained": False, "model.freeze": "head"})
    model = make_model(cfg)
    opt = torch.optim.Adam(model.get_classifier().parameters(), lr=1e-3)
    y = torch.zeros(BATCH, dtype=torch.long)
    batches = {"floor": _nothing, "notebook": _notebook, "ours": _ours}[mode](m, model, root)
    for i, x in enumerate(batches):
        if i < steps:
            loss = torch.nn.functional.cross_entropy(model(x), y[: len(x)])
            opt.zero_grad()
            loss.backward()
            opt.step()
    peaks.running = False
    status = _status()
    return {
        "mode": mode,
        "seconds": time.perf_counter() - t0,
        "hwm_kb": status["VmHWM"],
        "anon_kb": max(peaks.anon, status["RssAnon"]),
        "file_kb": max(peaks.file, status["RssFile"]),
    }


def _nothing(m, model, root):
    return iter(())


def _notebook(m, model, root):
    """Every train image decoded at full size, resized, as a float32 tensor kept in a list."""
    import torch
    from PIL import Image
    from torchvision import transforms

    from skin.train.model import input_spec

    spec = input_spec(model, SIZE)
    tfm = transforms.Compose(
        [
            transforms.Resize((SIZE, SIZE)),
            transforms.ToTensor(),
            transforms.Normalize(spec.mean, spec.std),
        ]
    )
    source = Path(m["source"].iloc[0])
    tensors = [tfm(Image.open(source / k).convert("RGB")) for k in m["key"]]
    return (torch.stack(tensors[i : i + BATCH]) for i in range(0, len(tensors), BATCH))


def _ours(m, model, root):
    """The pipeline's way: decode once into the uint8 memmap, batches read from it."""
    import numpy as np

    from skin.data.imagecache import build_cache
    from skin.train.datasets import EvalImages, Normalize, make_loader
    from skin.train.model import input_spec

    spec = input_spec(model, SIZE)
    cache = build_cache(m, spec.cache_size, root)
    data = EvalImages(cache, np.arange(len(m)), np.zeros(len(m), dtype=np.int64), SIZE)
    norm = Normalize(spec)
    return (norm(x) for x, _ in make_loader(data, batch_size=BATCH, shuffle=True, seed=0))


def measure(mode: str, manifest_path: Path, root: Path, steps: int) -> dict[str, Any]:
    """Run one child; its own peak RSS comes from wait4 (this child alone, not all children)."""
    out = root.parent / f"{mode}-{root.name}.json"
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.memory",
        mode,
        str(manifest_path),
        str(root),
        str(steps),
        str(out),
    ]
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(cmd, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{mode} child failed: {proc.stderr.read().decode()[-3000:] if proc.stderr else ''}"
        )
    record = json.loads(out.read_text())
    record["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)
    return record


def run(ctx: Context) -> dict[str, Any]:
    n, steps = ctx.pick((600, 3), (4000, 5))
    small = manifest(str(isic_like(n, 600, 450)))
    double = manifest(str(isic_like(2 * n, 600, 450, seed=1)))
    paths = {}
    for name, m in (("n", small), ("2n", double)):
        paths[name] = ctx.work / f"manifest-{name}.parquet"
        m.to_parquet(paths[name], index=False)
    floor = measure("floor", paths["n"], ctx.work / "floor", steps)
    base = measure("notebook", paths["n"], ctx.work / "nb", steps)
    ours = measure("ours", paths["n"], ctx.work / "ours", steps)
    ours2 = measure("ours", paths["2n"], ctx.work / "ours2", steps)
    count = len(small)
    mb = lambda kb: round(kb / 1024, 1)  # noqa: E731
    return result(
        NAME,
        ctx,
        base["seconds"],
        ours["seconds"],
        1.0,
        ratio_note="wall of the two children; the memory figures are the point",
        images=count,
        source_size="600x450",
        image_size=SIZE,
        float_tensors_mb=round(count * 3 * SIZE * SIZE * 4 / 2**20, 1),
        uint8_cache_mb=round(count * 256 * 256 * 3 / 2**20, 1),
        floor_peak_rss_mb=floor["peak_rss_mb"],
        baseline_peak_rss_mb=base["peak_rss_mb"],
        ours_peak_rss_mb=ours["peak_rss_mb"],
        rss_ratio=round(base["peak_rss_mb"] / ours["peak_rss_mb"], 2),
        baseline_rss_above_floor_mb=round(base["peak_rss_mb"] - floor["peak_rss_mb"], 1),
        ours_rss_above_floor_mb=round(ours["peak_rss_mb"] - floor["peak_rss_mb"], 1),
        floor_note="floor = the same child with the model and no data: torch's CUDA libraries"
        " alone map ~0.7 GB of file pages",
        baseline_peak_anon_mb=mb(base["anon_kb"]),
        ours_peak_anon_mb=mb(ours["anon_kb"]),
        ours_peak_file_mb=mb(ours["file_kb"]),
        baseline_anon_above_floor_mb=mb(base["anon_kb"] - floor["anon_kb"]),
        ours_anon_above_floor_mb=mb(ours["anon_kb"] - floor["anon_kb"]),
        ours_double_images=len(double),
        ours_double_peak_rss_mb=ours2["peak_rss_mb"],
        ours_double_peak_anon_mb=mb(ours2["anon_kb"]),
        floor_peak_anon_mb=mb(floor["anon_kb"]),
        timed_steps=steps,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="one memory-benchmark child")
    parser.add_argument("mode", choices=["floor", "notebook", "ours"])
    parser.add_argument("manifest")
    parser.add_argument("root")
    parser.add_argument("steps", type=int)
    parser.add_argument("out")
    a = parser.parse_args()
    Path(a.out).write_text(json.dumps(child(a.mode, a.manifest, a.root, a.steps)))
