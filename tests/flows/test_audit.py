"""The audit flow and the audit in the data stages: deployed, cached on the listing, and turning
it on over an earlier plain split moves each straddling cluster into one split."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml
from PIL import Image

from skin.data import manifest as mf
from skin.data.synthetic import encode_jpeg
from tests.helpers import planted_images
from tests.recipes import TINY

ROOT = Path(__file__).resolve().parents[2]


def test_the_audit_deployment_runs_the_audit_flow() -> None:
    from flows.audit import audit_flow

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    (audit,) = [d for d in spec["deployments"] if d["name"] == "audit"]
    path, name = audit["entrypoint"].split(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    assert getattr(module, name) is audit_flow
    assert set(audit["parameters"]) <= {
        "config_path",
        "data_uri",
        "overrides",
        "manifest",
        "run_id",
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("planted")
    images, _ = planted_images(per_class=8, copies_per_kind=3, size=96, seed=7)
    for s in images:
        (root / s.label).mkdir(exist_ok=True)
        (root / s.label / f"{s.image_id}.jpg").write_bytes(s.data)
    (root / "NV" / "BLACK.jpg").write_bytes(encode_jpeg(Image.new("RGB", (96, 96), (1, 1, 1))))
    return root


@pytest.mark.slow
@pytest.mark.server
def test_turning_the_audit_on_gathers_each_leaking_cluster_into_one_split(
    data: Path, tmp_path: Path, prefect_api: None
) -> None:
    from flows.audit import audit_flow
    from flows.stages import split_flow

    ov = {**TINY, "work_dir": str(tmp_path / "work"), "split.fractions": [0.4, 0.3, 0.3]}
    plain = split_flow(data_uri=str(data), overrides={**ov, "audit.enabled": False})
    assert "audit" not in plain["stages"], plain["stages"]
    found = audit_flow(data_uri=str(data), overrides=ov, manifest="latest")
    assert found["stages"] == {"list-images": "ran", "audit": "ran"}, found["stages"]
    assert found["audit"]["pairs"] >= 18 and found["audit"]["unusable"] >= 1, found["audit"]
    assert found["leaks"]["pairs"] > 0, "the plain split left no copy across splits"
    assert "would have leaked" in found["summary"]

    audited = split_flow(data_uri=str(data), overrides=ov)  # stays stable against the plain one
    assert audited["stages"]["audit"] == "cached", "the audit is cached on the listing"
    assert audited["stages"]["split"] == "ran"
    df = mf.read(audited["manifest"]["uri"])  # validate: no cluster straddles splits
    assert df[mf.CLUSTER].notna().sum() == found["audit"]["clustered_images"]
    again = audit_flow(data_uri=str(data), overrides=ov, manifest="latest")
    assert again["leaks"]["pairs"] == 0, again["leaks"]


@pytest.mark.slow
@pytest.mark.server
def test_suspect_labels_from_a_cv_run_are_logged_to_it_and_can_be_excluded(
    data: Path, tmp_path: Path, prefect_api: None
) -> None:
    import numpy as np
    import pandas as pd
    from mlflow import MlflowClient

    from flows.audit import audit_flow
    from flows.stages import split_flow
    from skin.track.tracking import MLflowRegistry

    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ov = {**TINY, "work_dir": str(tmp_path / "work"), "tracking.tracking_uri": tracking}
    cv_run = MLflowRegistry(tracking).create_run("audit-cv", "cv", {})
    keys = sorted(str(p.relative_to(data)) for p in data.rglob("*.jpg"))
    labels = [k.split("/")[0] for k in keys]
    classes = ["AK", "BCC", "BKL", "DF", "MEL", "NV", "SCC", "VASC"]
    probs = np.full((len(keys), len(classes)), 0.02)
    probs[np.arange(len(keys)), [classes.index(c) for c in labels]] = 0.86
    wrong = keys[:3]  # the models are sure these are MEL
    probs[:3] = 0.02
    probs[:3, classes.index("MEL")] = 0.86
    oof = pd.DataFrame(probs, columns=[f"prob_{c}" for c in classes]).assign(key=keys, label=labels)
    folder = tmp_path / "work" / "cv" / cv_run
    folder.mkdir(parents=True)
    oof.to_parquet(folder / "oof_predictions.parquet")

    found = audit_flow(data_uri=str(data), overrides=ov, cv_run=cv_run)
    suspects = pd.read_csv(found["suspects"]["label_issues_uri"])
    assert set(wrong) <= set(suspects["key"]), suspects
    assert list(suspects.columns) == ["key", "given_label", "suggested_label", "score"]
    logged = {a.path for a in MlflowClient(tracking).list_artifacts(cv_run, "audit")}
    assert {"audit/label_issues.csv", "audit/label_issues.png"} <= logged, logged
    assert "Suspect labels" in found["summary"]

    split = split_flow(data_uri=str(data), overrides={**ov, "audit.exclude": ["label_issues"]})
    df = mf.read(split["manifest"]["uri"])
    assert not set(suspects["key"]) & set(df["key"]), "excluded suspects reached the manifest"


@pytest.mark.slow
@pytest.mark.server
def test_embeddings_confirm_the_hash_pairs_through_the_audit_task(
    data: Path, tmp_path: Path, prefect_api: None
) -> None:
    import pandas as pd

    from flows.audit import audit_flow

    ov = {**TINY, "work_dir": str(tmp_path / "work"), "audit.embeddings": True}
    strict = audit_flow(data_uri=str(data), overrides={**ov, "audit.min_cosine": 0.9})
    pairs = pd.read_csv(Path(strict["audit"]["uri"]) / "pairs.csv")
    assert len(pairs) and pairs["cosine"].between(0.9, 1.0 + 1e-6).all(), pairs
    assert pairs["rule"].str.contains("cosine≥0.9").all(), pairs["rule"].unique()
    nothing = audit_flow(data_uri=str(data), overrides={**ov, "audit.min_cosine": 1.0})
    assert nothing["stages"]["audit"] == "ran", "the cosine setting is in the audit's key"
    assert nothing["audit"]["pairs"] <= strict["audit"]["pairs"]
