"""Flow results: read by attribute, and still by the keys each flow's dict had before."""

from __future__ import annotations

import pickle
from dataclasses import fields

import pytest

from flows.outcomes import (
    CVResult,
    DriftResult,
    EnsembleResult,
    EvaluateResult,
    FlowResult,
    ListResult,
    NotRetrained,
    PipelineResult,
    PredictResult,
    ShardsResult,
    SplitResult,
    SweepResult,
    TrainResult,
)
from skin.data.stages import ListingRef, ManifestRef
from skin.monitor.drift import Reference
from skin.release.registry import Registration

LISTING = ListingRef("l.parquet", "fp", "folders", 3, {"NV": 3}, {"not an image": 1}, "s.csv")
MANIFEST = ManifestRef("m.parquet", "h", "d", 3)
REG = Registration("skin", "2", "champion", 0.7, 0.6, "1")
EVAL = {"run_id": "r", "metrics": {"dev_balanced_accuracy": 0.7}, "diagnosis": "bias",
        "report_dir": "report", "url": None, "model_uri": "models:/m-1"}  # fmt: skip
TRAIN = {"run_id": "r", "run_dir": "runs/r", "best_checkpoint": "b.pt", "best_epoch": 2,
         "last_epoch": 3, "resumed_from": None, "stopped_early": False, "feature_path": False,
         "bad_images": 0, "history": [{"epoch": 1.0}]}  # fmt: skip
CV = {"parent_run_id": "p", "folds": [{"fold": 0, "run_id": "f0"}],
      "metrics": {"cv_oof_balanced_accuracy": 0.6}, "oof_uri": "oof.parquet",
      "table_uri": "folds.csv", "manifest_uri": "m.parquet", "manifest_hash": "h"}  # fmt: skip
CHECKED = {"reference": "models:/skin@champion", "current": "data", "n_reference": 3,
           "n_current": 4, "alpha": 0.05, "note": "", "unit": "images", "groups_reference": 3,
           "groups_current": 4, "unit_note": "", "drifted": False, "verdict": "no drift",
           "checks": [], "markdown": "# drift", "mlflow_run_id": "d", "mlflow_url": None,
           "files": {}}  # fmt: skip
STAGES = {"list-images": "ran"}
PIPELINE = {"run_id": "r", "skipped": {}, "bad_images": 0, "registration": REG,
            "mlflow_url": None, "manifest_uri": "m.parquet", "manifest_hash": "h",
            "best_epoch": 2, "metrics": {}, "diagnosis": "bias", "report_dir": "report",
            "stages": STAGES, "retrained": True, "reason": "retrain.when is always"}  # fmt: skip

# Each flow's result, and the keys its dict had before it became a dataclass (in that order).
CASES = [
    (ListResult(**LISTING.to_dict()), list(LISTING.to_dict())),
    (SplitResult(MANIFEST, LISTING, STAGES), ["manifest", "listing", "stages"]),
    (TrainResult(**TRAIN, manifest_uri="m.parquet", stages=STAGES),
     [*TRAIN, "manifest_uri", "stages"]),
    (EvaluateResult(**EVAL, stages=STAGES), [*EVAL, "stages"]),
    (ShardsResult("s3://b/shards", 2, 1, 1, 0, 10),
     ["uri", "shards", "built", "reused", "bad", "count"]),
    (PredictResult("imgs", "out.parquet", "models:/skin/2", "models:/skin@champion", "r", 2,
                   False, 5, 4, 1, True, 1, {"NV": 4}),
     ["source", "output", "model", "model_ref", "run_id", "epoch", "tta", "images",
      "predicted", "errors", "abstains", "abstained", "counts"]),
    (DriftResult.of(CHECKED, Reference("models:/skin@champion", "m.parquet", "h"), STAGES),
     [*CHECKED, "stages"]),
    (PipelineResult(**PIPELINE), list(PIPELINE)),
    (PipelineResult(**PIPELINE, holdout={"class": "DF", "classes": 7}, drift=CHECKED),
     [*PIPELINE, "holdout", "drift"]),
    (NotRetrained(False, "no new data", "new-data", None, {}, "m.parquet", "h", None, STAGES),
     ["retrained", "reason", "policy", "run_id", "skipped", "manifest_uri", "manifest_hash",
      "drift", "stages"]),
    (EnsembleResult(**EVAL, members=["a", "b"]), [*EVAL, "members"]),
    (EnsembleResult(**EVAL, members=["a"], registration=REG), [*EVAL, "members", "registration"]),
    (CVResult(**CV, stages=STAGES), [*CV, "stages"]),
    (CVResult(**CV, stages=STAGES, ensemble=EnsembleResult(**EVAL, members=["f0"])),
     [*CV, "stages", "ensemble"]),
    (SweepResult("s", "sqlite:///s.db", "p", "h", 3, [], [], [], None, None, STAGES, 1.0, 2.0),
     ["name", "storage", "parent_run_id", "manifest_hash", "images", "ran", "errors", "trials",
      "best", "registration", "stages", "data_seconds", "seconds"]),
]  # fmt: skip


@pytest.mark.parametrize(("result", "keys"), CASES, ids=lambda c: type(c).__name__)
def test_each_result_still_reads_by_its_old_keys(result: FlowResult, keys: list[str]) -> None:
    old = result.to_dict()
    assert list(old) == keys, f"{type(result).__name__}: the dict's keys, as before"
    assert list(result) == keys and len(result) == len(keys) and dict(result) == old
    for key in keys:
        assert result[key] == old[key] and key in result and result.get(key) == old[key]
    assert result.get("not-a-key") is None and "not-a-key" not in result


@pytest.mark.parametrize(("result", "keys"), CASES, ids=lambda c: type(c).__name__)
def test_each_result_reads_by_attribute_and_survives_pickling(
    result: FlowResult, keys: list[str]
) -> None:
    names = [f.name for f in fields(result)]  # type: ignore[arg-type]
    assert set(keys) <= set(names), "every old key is an attribute"
    assert pickle.loads(pickle.dumps(result)) == result, "Prefect persists results by pickling"


def test_nested_results_read_as_the_plain_dicts_they_were() -> None:
    split = SplitResult(MANIFEST, LISTING, STAGES)
    assert split["manifest"]["uri"] == "m.parquet" and split.manifest.uri == "m.parquet"
    pipeline = PipelineResult(**PIPELINE)
    assert pipeline["registration"] == REG.to_dict() and pipeline.registration is REG
    assert "holdout" not in pipeline and pipeline.get("drift") is None, "absent, as before"
    drift = DriftResult.of(CHECKED, Reference("models:/skin@champion", "m.parquet", "h"), {})
    assert drift["reference"]["manifest_uri"] == "m.parquet", "the reference in full"
    cv = CVResult(**CV, ensemble=EnsembleResult(**EVAL, members=["f0"]))
    assert cv["ensemble"]["members"] == ["f0"] and "registration" not in cv["ensemble"]
    assert cv.score == 0.6 and cv.ensemble is not None and cv.ensemble.run_id == "r"


@pytest.mark.server
def test_prefect_persists_a_flow_result_and_reads_it_back(prefect_api: None) -> None:
    from prefect import flow
    from prefect.results import ResultStore

    @flow(persist_result=True)
    def split_like() -> SplitResult:
        return SplitResult(MANIFEST, LISTING, STAGES)

    state = split_like(return_state=True)
    key = state.data.metadata.storage_key
    stored = ResultStore(result_storage=state.data.metadata.storage_block_id).read(key).result
    assert stored == SplitResult(MANIFEST, LISTING, STAGES), "read back from result storage"
    assert stored["manifest"]["hash"] == "h" and stored.listing.images == 3
