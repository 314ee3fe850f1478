"""GPU smoke test of the real stages: a full fine-tune (AMP, channels_last, augmentation, workers)
then evaluation with TTA, through skin.evaluate.stage exactly as the pipeline runs them.

`python -m benchmarks.gpu_smoke` on a GPU machine (no Prefect, MLflow or boto3 needed); prints and
writes $OUT/gpu_smoke.json.
"""

from __future__ import annotations

import sys

for _absent in ("prefect", "mlflow", "boto3", "botocore"):
    sys.modules.setdefault(_absent, None)  # type: ignore[arg-type]

import json  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from benchmarks.data import isic_like  # noqa: E402
from skin.base.config import load_config  # noqa: E402
from skin.data import manifest as mf  # noqa: E402
from skin.data.stages import build_manifest, list_images, source_uri  # noqa: E402
from skin.evaluate.stage import evaluate_stage  # noqa: E402
from skin.track.tracking import NullTracker  # noqa: E402
from skin.train.stage import train_stage  # noqa: E402


def main() -> dict[str, object]:
    out = Path(os.environ.get("OUT", "gpu-out"))
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="skin-gpu-smoke-"))
    data = isic_like(512, 600, 450, seed=3)
    cfg = load_config(
        None,
        {
            "data.uri": str(data),
            "work_dir": str(work),
            "model.name": "tf_efficientnet_lite0",
            "model.pretrained": False,
            "model.freeze": "none",
            "train.epochs": 3,
            "train.batch_size": 64,
            "train.augment.enabled": True,
            "train.device": "auto",
            "evaluate.tta": True,
            "tracking.log_model": False,
        },
    )
    df = build_manifest(list_images(cfg.data), source_uri(cfg.data.uri), cfg.split)
    uri = str(work / "manifest.parquet")
    mf.write(df, uri)
    tracker = NullTracker("gpu-smoke")
    t0 = time.perf_counter()
    trained = train_stage(uri, cfg, tracker)
    t1 = time.perf_counter()
    evaluated = evaluate_stage(uri, trained.best_checkpoint, cfg, tracker)
    t2 = time.perf_counter()
    report = {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "images": len(df),
        "train_s": round(t1 - t0, 2),
        "evaluate_s": round(t2 - t1, 2),
        "epoch_s": [round(h["seconds"], 2) for h in trained.history],
        "train_loss": [round(h["train_loss"], 4) for h in trained.history],
        "feature_path": trained.feature_path,
        "test_balanced_accuracy": evaluated.metrics["test_balanced_accuracy"],
        "tta_gain": evaluated.metrics.get("tta_gain"),
    }
    (out / "gpu_smoke.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
