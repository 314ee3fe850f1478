"""ONNX export: onnxruntime on real images gives the probabilities torch gives."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from skin.serve.export import export_onnx
from skin.serve.loading import load_predictor
from skin.serve.predict import PredictError
from tests.helpers import invoke
from tests.serve.test_pyfunc import encoded, tiny_checkpoint


def onnx_probs(path: Path, images: list[bytes], predictor) -> np.ndarray:
    """Decode and crop as `skin predict` does, normalise with the graph's own metadata, run."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    mean = np.array(json.loads(meta["skin.mean"]), dtype=np.float32)
    std = np.array(json.loads(meta["skin.std"]), dtype=np.float32)
    x = np.stack([predictor.to_input(b) for b in images]).astype(np.float32) / 255.0
    x = ((x - mean) / std).transpose(0, 3, 1, 2)
    (logits,) = session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(x)})
    z = np.exp(logits - logits.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("export"), seed=3)


def test_onnx_probabilities_match_torch_on_real_images_at_any_batch_size(
    checkpoint: Path, tmp_path: Path
) -> None:
    predictor = load_predictor(str(checkpoint), "cpu")
    out = export_onnx(predictor, tmp_path / "model.onnx")
    images = [encoded("JPEG", 1), encoded("PNG", 2), encoded("JPEG", 3, (300, 200))]
    expected = predictor.predict(images)
    for batch in ([images[0]], images):  # the batch dimension is dynamic
        got = onnx_probs(out, batch, predictor)
        np.testing.assert_allclose(got, expected[: len(batch)], atol=1e-4)


def test_the_graph_carries_its_preprocessing_and_class_order(
    checkpoint: Path, tmp_path: Path
) -> None:
    import onnx

    predictor = load_predictor(str(checkpoint), "cpu")
    graph = onnx.load(str(export_onnx(predictor, tmp_path / "model.onnx")))
    meta = {p.key: p.value for p in graph.metadata_props}
    assert json.loads(meta["skin.classes"]) == list(predictor.classes), meta
    assert int(meta["skin.size"]) == predictor.spec.size, meta
    assert int(meta["skin.resize"]) == predictor.spec.cache_size, meta
    assert meta["skin.interpolation"] == predictor.spec.interpolation, meta
    assert float(meta["skin.crop_pct"]) == predictor.spec.crop_pct, meta
    assert json.loads(meta["skin.std"]) == list(predictor.spec.std), meta
    batch = graph.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value, f"batch must be dynamic: {batch}"


def test_export_refuses_to_overwrite_and_other_suffixes(checkpoint: Path, tmp_path: Path) -> None:
    predictor = load_predictor(str(checkpoint), "cpu")
    existing = tmp_path / "model.onnx"
    existing.write_bytes(b"keep me")
    with pytest.raises(PredictError, match="already exists"):
        export_onnx(predictor, existing)
    assert existing.read_bytes() == b"keep me"
    with pytest.raises(PredictError, match=r"\.onnx"):
        export_onnx(predictor, tmp_path / "model.pt")


def test_the_export_command_writes_a_runnable_graph(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli.onnx"
    code, output = invoke("export", "--model", str(checkpoint), "--format", "onnx", str(out))
    assert code == 0, output
    predictor = load_predictor(str(checkpoint), "cpu")
    image = encoded("PNG", 5)
    np.testing.assert_allclose(
        onnx_probs(out, [image], predictor), predictor.predict([image]), atol=1e-4
    )
    code, output = invoke("export", "--model", str(checkpoint), "--format", "tflite", str(out))
    assert code != 0 and "onnx" in output, output
