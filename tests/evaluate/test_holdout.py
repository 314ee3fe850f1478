"""A held-out class: set apart after the split (caches shared), trained without, found as unknown."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from skin.base.config import ConfigError, load_config
from skin.data import manifest as mf
from tests.helpers import make_manifest, plain_spec

HELD = "DF"


def test_the_held_out_class_is_set_apart_after_the_split_from_the_same_cache(
    tmp_path: Path, sample_data: Path
) -> None:
    from skin.train.feeds import index_splits

    uri, cfg = make_manifest(tmp_path, sample_data)
    manifest = mf.read(uri)
    held_cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"holdout_class": HELD})})
    spec = plain_spec(32)
    normal, held = index_splits(manifest, cfg, spec), index_splits(manifest, held_cfg, spec)
    assert held.cache.path == normal.cache.path, "one decoded-image cache for both runs"
    assert held.classes == tuple(c for c in cfg.data.classes if c != HELD), held.classes
    assert normal.unknown == {}, "no unknowns without a held-out class"
    labels = manifest.set_index("key")["label"]
    for split in mf.SPLITS:
        kept = labels.loc[held.cache.keys[held.rows[split]]]
        assert HELD not in set(kept), f"{split}: no {HELD} image is trained or scored as known"
        expected = normal.rows[split][labels.loc[normal.cache.keys[normal.rows[split]]] != HELD]
        np.testing.assert_array_equal(held.rows[split], expected)
        names = [held.classes[i] for i in held.labels[split]]
        assert names == kept.tolist(), f"{split}: labels index the known classes"
    for split in ("dev", "test"):
        unknown = labels.loc[held.cache.keys[held.unknown[split]]]
        in_split = manifest[(manifest["split"] == split) & (manifest["label"] == HELD)]
        assert len(unknown) == len(in_split) > 0 and set(unknown) == {HELD}, split
    assert "train" not in held.unknown, "train's held-out images are simply dropped"


def test_the_held_out_class_changes_the_training_key_and_must_be_a_class(tmp_path: Path) -> None:
    from skin.data.stages import ManifestRef
    from tasks.training import train_key

    ref = ManifestRef(uri="m.parquet", hash="abc", dataset="d", images=1)
    plain = load_config(None, {"work_dir": str(tmp_path)})
    held = load_config(None, {"work_dir": str(tmp_path), "data.holdout_class": HELD})
    assert train_key(plain, ref) != train_key(held, ref), "a held-out run trains anew"
    assert held.data.known_classes == tuple(c for c in held.data.classes if c != HELD)
    with pytest.raises(ConfigError, match=r"data\.holdout_class 'XYZ'"):
        load_config(None, {"data.holdout_class": "XYZ"})
    with pytest.raises(ConfigError, match=r"predict\.abstain_coverage"):
        load_config(None, {"predict.abstain_coverage": 0})


def test_skin_run_passes_the_held_out_class(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.outcomes import PipelineResult
    from tests.helpers import invoke

    calls: list[dict[str, Any]] = []
    metrics = {f"{s}_balanced_accuracy": 0.5 for s in mf.SPLITS}
    metrics |= {"bias": 0.5, "variance": 0.0, "variance_test": 0.0}
    metrics |= {"dev_abstain_threshold": 0.3, "dev_abstain_coverage": 0.95}
    metrics |= {"test_abstain_rate": 0.1, "test_accepted_accuracy": 0.9, "test_known_accuracy": 0.8}
    metrics |= {"test_unk_auroc": 0.91, "test_unk_recall": 0.6, "test_balanced_accuracy_9": 0.7}
    result = PipelineResult(run_id="r1", skipped={}, bad_images=0, registration=None,
                            mlflow_url=None, manifest_uri="m.parquet", manifest_hash="h",
                            best_epoch=1, metrics=metrics, diagnosis="ok",
                            report_dir=str(tmp_path), stages={}, retrained=True, reason="")  # fmt: skip

    def fake(**kwargs: Any) -> PipelineResult:
        calls.append(kwargs)
        return result

    monkeypatch.setattr("flows.pipeline.pipeline_flow", fake)
    code, out = invoke("run", "--data", str(tmp_path), "--holdout-class", HELD)
    assert code == 0, out
    assert calls[0]["overrides"] == {"data.holdout_class": HELD}, calls
    assert "AUROC 0.9100" in out and "UNK recall 0.6000" in out, out
    code, out = invoke("run", "--data", str(tmp_path), "--holdout-class", "XYZ")
    assert code == 1 and "holdout_class" in out, out


# --------------------------------------------------------------------------- trained without DF

PER_CLASS, SIZE, EPOCHS = 60, 48, 15
# Measured here (seeded, CPU): test AUROC 0.94 (msp), 0.90 (energy); the bars leave margin.
MIN_AUROC = 0.75
ACCURACY_TOLERANCE = 0.02


@dataclass(frozen=True)
class HeldOut:
    metrics: dict[str, float]
    logged: dict[str, float]
    report: Path
    checkpoint: Path


@pytest.fixture(scope="module")
def held_out(tmp_path_factory: pytest.TempPathFactory) -> HeldOut:
    from skin.data.sample_data import write_sample_dataset
    from skin.data.synthetic import class_counts
    from skin.evaluate.stage import evaluate_stage
    from skin.track.tracking import NullTracker
    from skin.train.stage import train_stage

    tmp = tmp_path_factory.mktemp("holdout")
    data = tmp / "data"
    write_sample_dataset(str(data), class_counts(per_class=PER_CLASS), size=SIZE, seed=1)
    overrides = {"train.epochs": EPOCHS, "evaluate.bootstrap": 0, "data.holdout_class": HELD}
    uri, cfg = make_manifest(tmp, data, **overrides)
    tracker = NullTracker("holdout")
    trained = train_stage(uri, cfg, tracker)
    outcome = evaluate_stage(uri, trained.best_checkpoint, cfg, tracker)
    report = Path(outcome.report_dir)
    return HeldOut(outcome.metrics, tracker.metrics, report, Path(trained.best_checkpoint))


@pytest.mark.slow
def test_a_held_out_class_is_detected_well_above_chance(held_out: HeldOut) -> None:
    m = held_out.metrics
    assert m["test_unk_auroc"] >= MIN_AUROC, f"AUROC known vs {HELD}: {m['test_unk_auroc']}"
    assert m["test_unk_recall"] > m["test_abstain_rate"], "UNK is said more to unknowns"
    assert m["test_accepted_accuracy"] >= m["test_known_accuracy"] - ACCURACY_TOLERANCE, m
    for name in ("test_unk_auroc", "test_unk_recall", "test_balanced_accuracy_9"):
        assert held_out.logged[name] == m[name], f"{name} is logged"
    assert m["dev_abstain_coverage"] >= 0.95, "the threshold covers 95 % of known dev images"


@pytest.mark.slow
def test_the_held_out_model_knows_seven_classes_and_its_report_says_unk(held_out: HeldOut) -> None:
    from skin.train import checkpoint as ckpt

    classes = ckpt.load(held_out.checkpoint)["classes"]
    assert HELD not in classes and len(classes) == 7, classes
    doc = json.loads((held_out.report / "abstention.json").read_text())
    assert (
        doc["holdout_class"] == HELD
        and doc["threshold"] == held_out.metrics["dev_abstain_threshold"]
    ), doc
    assert doc["unknown_images"]["test"] > 0, doc
    summary = (held_out.report / "summary.md").read_text()
    assert "## Unknown lesions" in summary and f"held out of training: {HELD}" in summary, summary
