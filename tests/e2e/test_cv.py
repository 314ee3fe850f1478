"""Cross-validation end to end: grouped folds over train the flow really used, pooled OOF scores,
and the fold ensemble calibrated and thresholded on the dev no fold trained on, registered and
served through `skin predict` (against a real MLflow server)."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from sklearn.metrics import balanced_accuracy_score

from skin.data import manifest as mf
from skin.data.sample_data import write_sample_dataset
from skin.data.synthetic import class_counts
from skin.serve.averaging import calibrate_mean
from skin.serve.loading import load_predictor
from skin.stats.abstain import coverage_threshold
from tests.helpers import invoke
from tests.recipes import TINY

pytestmark = [pytest.mark.slow, pytest.mark.server]

FOLDS = 3


def test_cv_folds_are_grouped_scored_out_of_fold_and_ensembled(
    tmp_path: Path, mlflow_server, prefect_api
) -> None:
    from flows.cv import cv_flow

    data = tmp_path / "data"
    written = write_sample_dataset(
        str(data), class_counts(per_class=24), size=40, seed=3, layout="isic",
        repeat_fraction=0.4, duplicate_fraction=0.1, threads=2,
    )  # fmt: skip
    assert written["lesion_id"].duplicated().any(), "some lesions have several images"
    name = f"skin-cv-{uuid.uuid4().hex[:8]}"
    overrides = {
        **TINY,
        "train.epochs": 2,
        "evaluate.bootstrap": 50,
        "work_dir": str(tmp_path / "work"),
        "tracking.tracking_uri": mlflow_server.url,
        "tracking.experiment": f"test-cv-{uuid.uuid4().hex[:8]}",
        "tracking.registered_model": name,
    }
    result = cv_flow(data_uri=str(data), overrides=overrides, folds=FOLDS, register_model=True)

    client = MlflowClient(tracking_uri=mlflow_server.url)
    parent = client.get_run(result["parent_run_id"])
    main = mf.read(parent.data.tags["manifest_uri"])
    nested = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
    )
    children = [c for c in nested if "skin.cv_fold" in c.data.tags]
    assert len(children) == FOLDS, "one child run per fold, nested under the parent"
    ensembles = [c.info.run_id for c in nested if "skin.cv_fold" not in c.data.tags]
    assert ensembles == [result["ensemble"]["run_id"]], "the ensemble is nested under the parent"
    assert parent.data.tags["skin.cv_ensemble"] == ensembles[0], "and the parent names it"
    used = [mf.read(c.data.tags["manifest_uri"]) for c in children]  # what each fold trained on
    pool = main[main["split"] == "train"]
    assert pool["fingerprint"].duplicated().any(), "the data has exact duplicates to keep together"
    dev_keys = [set(m.loc[m["split"] == "dev", "key"]) for m in used]
    assert sum(map(len, dev_keys)) == len(pool) and set.union(*dev_keys) == set(pool["key"]), (
        "every train image validates in exactly one fold"
    )
    main_dev = main[main["split"] == "dev"]
    for m in used:
        assert not set(m["key"]) & set(main_dev["key"]), "no fold sees the ensemble's dev"
        assert set(m.loc[m["split"] == "test", "key"]) == set(
            main.loc[main["split"] == "test", "key"]
        )
        fold_test = m.loc[m["split"] == "test"].reset_index(drop=True)  # dev's rows left out
        assert fold_test.equals(main.loc[main["split"] == "test"].reset_index(drop=True)), (
            "test untouched"
        )
        mf.validate(m)  # no lesion or duplicate on both sides of a fold
    fold_of = {k: i for i, keys in enumerate(dev_keys) for k in keys}
    for column in ("lesion_id", "fingerprint"):
        grouped = pool.assign(fold=pool["key"].map(fold_of)).groupby(column)["fold"].nunique()
        assert (grouped == 1).all(), f"a {column} group is split across folds"

    m = parent.data.metrics
    for key in ("cv_balanced_accuracy_mean", "cv_balanced_accuracy_std", "cv_oof_balanced_accuracy",
                "cv_oof_accuracy", "cv_oof_macro_auc"):  # fmt: skip
        assert key in m, f"parent run lacks {key}"
    assert parent.data.tags["skin.cv"] == str(FOLDS)
    oof = pd.read_parquet(result["oof_uri"])
    assert sorted(oof["key"]) == sorted(pool["key"]), "each train image scored once, out of fold"
    classes = list(
        overrides.get("data.classes", [c.removeprefix("prob_") for c in oof.filter(regex="^prob_")])
    )
    y = oof["label"].map({c: i for i, c in enumerate(classes)})
    pred = oof[[f"prob_{c}" for c in classes]].to_numpy().argmax(1)
    assert m["cv_oof_balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    files = {a.path for a in client.list_artifacts(parent.info.run_id, "cv")}
    assert {"cv/folds.csv", "cv/oof_predictions.parquet"} <= files, files

    ens = result["ensemble"]
    assert ens["registration"]["alias"] == "champion", ens["registration"]
    assert "test_balanced_accuracy_ci_low" in ens["metrics"]
    members = [
        c.info.run_id for c in sorted(children, key=lambda c: int(c.data.tags["skin.cv_fold"]))
    ]
    images = sorted(data.rglob("*.jpg"))[:3]
    out = tmp_path / "served.parquet"
    code, text = invoke(
        "predict", *map(str, images), "--model", f"models:/{name}@champion",
        "--tracking-uri", mlflow_server.url, "--out", str(out),
    )  # fmt: skip
    assert code == 0, text
    served = pd.read_parquet(out)[[f"prob_{c}" for c in classes]].to_numpy()
    data_bytes = [p.read_bytes() for p in images]
    each = [
        load_predictor(r, "cpu", tracking_uri=mlflow_server.url).predict(data_bytes)
        for r in members
    ]
    temperature = ens["metrics"]["ensemble_temperature"]  # its own, fitted on its dev
    np.testing.assert_allclose(
        served, calibrate_mean(np.mean(each, axis=0), temperature), atol=1e-5
    )

    # Its thresholds were chosen on its own dev probabilities: what it serves on the dev no fold
    # model trained on (not one fold model's out-of-fold scores).
    report = Path(ens["report_dir"])
    scored = pd.read_parquet(report / "predictions_dev.parquet")
    assert sorted(scored["key"]) == sorted(main_dev["key"]) and "fold" not in scored
    probs = scored[[f"prob_{c}" for c in classes]].to_numpy()
    some = scored.head(4)
    dev_bytes = [
        (Path(src) / k).read_bytes() for src, k in zip(some["source"], some["key"], strict=True)
    ]
    again = load_predictor(f"models:/{name}@champion", "cpu", tracking_uri=mlflow_server.url)
    np.testing.assert_allclose(again.predict(dev_bytes), probs[: len(some)], atol=1e-5)
    threshold = ens["metrics"]["dev_abstain_threshold"]
    assert threshold == pytest.approx(coverage_threshold(1 - probs.max(1), 0.95), abs=1e-6)
