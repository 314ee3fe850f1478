"""explain: one explained image (prediction, Grad-CAM map, overlay PNG) against one plain
prediction of the same image, in process, on the demo's model at 224 px.

Both sides take the same 600x450 JPEG bytes; they run interleaved image by image, so a shared
CPU's load hits them alike, and p50s are compared: ratio = prediction p50 / explained p50 (how
many plain predictions one explained image costs, inverted). Eigen-CAM (gradient-free) and TTA
Grad-CAM (8 views) are recorded beside it.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from benchmarks.common import Context, result
from benchmarks.serve import MODEL, checkpoint, images

NAME = "explain"


def run(ctx: Context) -> dict[str, Any]:
    import torch

    from skin.serve.explain import explain_images, overlay_base64
    from skin.serve.loading import load_predictor

    n = ctx.pick(12, 60)
    jpegs = images(n)
    predictor = load_predictor(str(checkpoint(ctx.work / "ckpt")), "cpu", batch_size=1)
    tta = predictor.using(tta=True)

    def explained(p: Any, method: str = "gradcam") -> None:
        maps = explain_images(p, [jpeg], method=method)
        overlay_base64(maps.images[0], maps.cams[0])

    contenders = {
        "predict": lambda: predictor.predict([jpeg]),
        "gradcam": lambda: explained(predictor),
        "eigencam": lambda: explained(predictor, "eigencam"),
    }
    jpeg = jpegs[0]
    for fn in contenders.values():
        fn()  # warm up
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for jpeg in jpegs:  # noqa: B007 (the contenders read it)
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    tta_s = []
    for jpeg in jpegs[: max(2, n // 6)]:  # noqa: B007
        t0 = time.perf_counter()
        explained(tta)
        tta_s.append(time.perf_counter() - t0)
    p50 = {name: float(np.percentile(t, 50)) for name, t in times.items()}
    return result(
        NAME, ctx, p50["predict"], p50["gradcam"], 0.2, model=MODEL, side=predictor.spec.size,
        images=n, image="600x450 JPEG", predict_p50_s=round(p50["predict"], 4),
        gradcam_p50_s=round(p50["gradcam"], 4), eigencam_p50_s=round(p50["eigencam"], 4),
        gradcam_tta_p50_s=round(float(np.percentile(tta_s, 50)), 4),
        layer=explain_images(predictor, jpegs[:1]).layer, torch_threads=torch.get_num_threads(),
        baseline_note="Predictor.predict([jpeg]): decode, crop, forward, softmax",
        ours_note="explain_images + overlay_base64: decode, crop, prediction, Grad-CAM"
        " (forward and backward), overlay PNG as base64 (the served column)",
    )  # fmt: skip
