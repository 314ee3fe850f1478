"""ONNX export: the network's logits from normalised input, its preprocessing in the metadata.

The graph takes float32 [N, 3, S, S] (any N): the image decoded, centre-cropped to S as
`Predictor.to_input` does, then (x / 255 - mean) / std per channel. Softmax of the logits
(divided by `temperature`) gives the probabilities `skin predict` reports.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from skin.serve.predict import PredictError, Predictor

OPSET = 17
INPUT, OUTPUT = "input", "logits"


def metadata(predictor: Predictor) -> dict[str, str]:
    """The preprocessing constants and class order, as ONNX metadata_props (strings)."""
    spec = predictor.spec
    return {
        "skin.classes": json.dumps(list(predictor.classes)),
        "skin.size": str(spec.size),
        "skin.resize": str(spec.cache_size),  # the square side decoded, before the centre crop
        "skin.crop_pct": str(spec.crop_pct),
        "skin.interpolation": spec.interpolation,
        "skin.mean": json.dumps(list(spec.mean)),
        "skin.std": json.dumps(list(spec.std)),
        "skin.input": "float32 NCHW RGB, (x / 255 - mean) / std",
        "skin.output": "logits; probabilities = softmax(logits / temperature)",
        "skin.temperature": str(predictor.temperature),
        "skin.model": predictor.source.resolved,
    }


def export_onnx(predictor: Predictor, out: Path, opset: int = OPSET) -> Path:
    """Write `predictor`'s network to `out` (.onnx) with a dynamic batch dimension."""
    import onnx

    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise PredictError(f"output {out} must end in .onnx")
    if out.exists():
        raise PredictError(
            f"output {out} already exists: choose another path (nothing overwritten)"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    model = predictor.model.float().cpu().eval()
    size = predictor.spec.size
    with warnings.catch_warnings():  # the TorchScript exporter warns that it is the old one
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(2, 3, size, size),),
            str(out),
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    graph = onnx.load(str(out))
    onnx.helper.set_model_props(graph, metadata(predictor))
    onnx.checker.check_model(graph)
    onnx.save(graph, str(out))
    return out
