"""The paired promotion gate end to end: challengers scored against the champion on the same images."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient

from skin.data.sample_data import write_sample_dataset
from skin.data.synthetic import class_counts
from tests.helpers import tracking_db
from tests.recipes import TINY

pytestmark = [pytest.mark.slow, pytest.mark.server]


def test_paired_gate_promotes_only_a_clearly_better_challenger(
    tmp_path: Path, sample_data: Path, prefect_api
) -> None:
    from flows.pipeline import pipeline_flow

    data = tmp_path / "data"
    shutil.copytree(sample_data, data)
    uri = tracking_db(tmp_path)
    base = {**TINY, "work_dir": str(tmp_path / "work"), "tracking.tracking_uri": uri,
            "tracking.experiment": f"gate-{uuid.uuid4().hex[:6]}",
            "tracking.registered_model": f"gate-{uuid.uuid4().hex[:6]}",
            "evaluate.bootstrap": 500}  # fmt: skip

    def run(**extra: object) -> dict:
        return pipeline_flow(data_uri=str(data), overrides={**base, **extra})["registration"]

    weak = run(**{"train.epochs": 1, "train.lr": 1e-5})
    assert weak["alias"] == "champion", "the first model is the champion"
    twin = run(**{"train.epochs": 1, "train.lr": 1e-5, "train.seed": 7})
    assert twin["alias"] == "challenger", f"an equal-in-truth retrain is not promoted: {twin}"
    assert twin["reason"].startswith("paired on"), twin["reason"]
    strong = run(**{"train.epochs": 10})
    assert strong["alias"] == "champion", f"a clearly better model is promoted: {strong}"
    assert "paired on" in strong["reason"] and f"champion v{weak['version']}" in strong["reason"]

    client = MlflowClient(tracking_uri=uri)
    tags = client.get_model_version(strong["name"], strong["version"]).tags
    assert float(tags["gate.difference"]) > 0 and tags["gate.champion_version"] == weak["version"]
    promotion = client.download_artifacts(client.get_model_version(
        strong["name"], strong["version"]).run_id, "promotion.md", str(tmp_path))  # fmt: skip
    assert "**champion**" in Path(promotion).read_text()
    card = client.get_model_version(strong["name"], strong["version"]).description
    assert card.startswith(f"# Model card: {strong['name']} v{strong['version']}"), card[:80]
    assert "Not a diagnosis" in card and "## Known limitations" in card

    # The data grows: the champion, trained on the older manifest, is re-scored on the new dev set.
    write_sample_dataset(str(tmp_path / "more"), class_counts(per_class=8), size=40, seed=11)
    for f in (tmp_path / "more").rglob("*.jpg"):
        target = data / f.relative_to(tmp_path / "more")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, target.with_name(f"new_{f.name}"))
    grown = run(**{"train.epochs": 10, "train.seed": 3})
    grown_tags = client.get_model_version(grown["name"], grown["version"]).tags
    assert grown_tags["gate.champion_version"] == strong["version"]
    assert grown_tags["gate.dataset"] != tags["gate.dataset"], "scored on the new data version"
    assert int(grown_tags["gate.n"]) > int(tags["gate.n"]), "on the grown dev set"
