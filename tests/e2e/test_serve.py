"""The champion served by `mlflow models serve` over HTTP: images in, the same answer as
`skin predict` and the batch flow out; a broken image costs only its own row."""

from __future__ import annotations

import base64
import io
import json
import os
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skin.base.labels import CLASSES
from skin.data import manifest as mf
from skin.serve.loading import load_predictor
from tests import servers
from tests.recipes import TINY

pytestmark = [pytest.mark.slow, pytest.mark.server]
ATOL = 1e-5


@dataclass(frozen=True)
class Champion:
    ref: str  # models:/NAME@champion
    tracking_uri: str
    files: dict[str, bytes]  # name -> real JPEG and PNG files from the test split


@pytest.fixture(scope="module")
def champion(tmp_path_factory, sample_data: Path, mlflow_server, prefect_api) -> Champion:
    from flows.pipeline import pipeline_flow

    name = f"skin-serve-{uuid.uuid4().hex[:8]}"
    overrides = {
        **TINY,
        "train.epochs": 2,
        "work_dir": str(tmp_path_factory.mktemp("serve") / "work"),
        "tracking.tracking_uri": mlflow_server.url,
        "tracking.experiment": f"serve-{uuid.uuid4().hex[:8]}",
        "tracking.registered_model": name,
    }
    result = pipeline_flow(data_uri=str(sample_data), overrides=overrides)
    assert result["registration"]["alias"] == "champion", result["registration"]
    df = mf.read(result["manifest_uri"])
    keys = sorted(df.loc[df["split"] == "test", "key"])[:3]
    files = {k: (sample_data / k).read_bytes() for k in keys}
    assert all(b[:2] == b"\xff\xd8" for b in files.values()), "the sample images are JPEGs"
    rgb = Image.open(io.BytesIO(files[keys[0]])).convert("RGB")
    buf = io.BytesIO()
    rgb.rotate(90, expand=True).save(buf, format="PNG")
    files["rotated.png"] = buf.getvalue()
    return Champion(f"models:/{name}@champion", mlflow_server.url, files)


@pytest.fixture(scope="module")
def served(champion: Champion, tmp_path_factory) -> Iterator[str]:
    """`mlflow models serve` on loopback (the venv's bin first on PATH: it execs uvicorn)."""
    port = servers.free_port()
    cmd = [str(servers.BIN / "mlflow"), "models", "serve", "-m", champion.ref,
           "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]  # fmt: skip
    env = {
        "PATH": f"{servers.BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLFLOW_TRACKING_URI": champion.tracking_uri,
    }
    log = tmp_path_factory.mktemp("serve-log") / "serve.log"
    server = servers.start(cmd, f"http://127.0.0.1:{port}", "/ping", log, env=env, timeout=180)
    try:
        yield server.url
    finally:
        server.stop()


def invoke(url: str, images: list[bytes], params: dict[str, Any] | None = None) -> pd.DataFrame:
    """POST /invocations with `dataframe_split` (a plain HTTP client), the answer as a frame."""
    rows = [[base64.b64encode(b).decode("ascii")] for b in images]
    body: dict[str, Any] = {"dataframe_split": {"columns": ["image"], "data": rows}}
    if params:
        body["params"] = params
    request = urllib.request.Request(
        f"{url}/invocations",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as resp:
        assert resp.status == 200, resp.status
        return pd.DataFrame(json.loads(resp.read())["predictions"])


def probs_of(frame: pd.DataFrame, prefix: str = "p_") -> np.ndarray:
    return frame[[f"{prefix}{c}" for c in CLASSES]].to_numpy(dtype=np.float64)


def test_served_predict_and_batch_flow_give_the_same_probabilities(
    champion: Champion, served: str, tmp_path: Path
) -> None:
    from flows.predict import predict_flow

    names, images = list(champion.files), list(champion.files.values())
    answer = invoke(served, images)
    predictor = load_predictor(champion.ref, "cpu", tracking_uri=champion.tracking_uri)
    expected = predictor.predict(images)
    assert answer["error"].isna().all(), answer["error"].tolist()
    np.testing.assert_allclose(probs_of(answer), expected, atol=ATOL)
    scored = predictor.score(names, champion.files.__getitem__)  # UNK past the stored threshold
    assert answer["label"].tolist() == scored["predicted_label"].tolist(), answer
    np.testing.assert_allclose(answer["ood_score"], scored["ood_score"], rtol=1e-4)

    folder = tmp_path / "incoming"
    folder.mkdir()
    for name, data in champion.files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    out = tmp_path / "predictions.parquet"
    predict_flow(str(folder), champion.ref, str(out), tracking_uri=champion.tracking_uri)
    batch = pd.read_parquet(out).set_index("key").loc[names]
    np.testing.assert_allclose(probs_of(batch, "prob_"), expected, atol=ATOL)
    assert batch["predicted_label"].tolist() == scored["predicted_label"].tolist(), batch


def test_a_broken_image_costs_only_its_own_row(champion: Champion, served: str) -> None:
    good = list(champion.files.values())[:2]
    truncated = good[0][: len(good[0]) // 3]
    answer = invoke(served, [good[0], b"not an image at all", truncated, good[1]])
    assert len(answer) == 4, answer
    assert answer["error"][[0, 3]].isna().all(), answer["error"].tolist()
    assert answer["error"][[1, 2]].notna().all(), answer["error"].tolist()
    assert np.isnan(probs_of(answer)[[1, 2]]).all(), "no probabilities for a broken image"
    expected = load_predictor(champion.ref, "cpu", tracking_uri=champion.tracking_uri).predict(good)
    np.testing.assert_allclose(probs_of(answer)[[0, 3]], expected, atol=ATOL)


def test_tta_is_asked_for_per_request(champion: Champion, served: str) -> None:
    images = list(champion.files.values())
    answer = invoke(served, images, params={"tta": True})
    predictor = load_predictor(champion.ref, "cpu", tta=True, tracking_uri=champion.tracking_uri)
    np.testing.assert_allclose(probs_of(answer), predictor.predict(images), atol=ATOL)
