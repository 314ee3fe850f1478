"""The pipeline's Prefect artifact `skin-run-summary`: numbers, UNK rule and registration."""

from __future__ import annotations

from typing import Any

from flows.outcomes import PipelineResult
from flows.pipeline import artifact_markdown
from skin.release.registry import Registration

ABSTAINED = {"dev_abstain_threshold": 0.3712, "dev_abstain_coverage": 0.951,
             "test_abstain_rate": 0.062, "test_accepted_accuracy": 0.8123,
             "test_known_accuracy": 0.7801}  # fmt: skip


def result(metrics: dict[str, float], **more: Any) -> PipelineResult:
    base = {"bias": 0.1, "variance": 0.02, "variance_test": 0.01, "dev_balanced_accuracy": 0.7}
    given = {"stages": {"train": "ran"}, "registration": None} | more
    return PipelineResult(run_id="r1", skipped={}, bad_images=0, mlflow_url=None,
                          manifest_uri="m.parquet", manifest_hash="abc", best_epoch=2,
                          metrics=base | metrics, diagnosis="bias", report_dir="report",
                          retrained=True, reason="", **given)  # fmt: skip


def test_the_artifact_shows_the_unk_rule_and_the_registration() -> None:
    reg = Registration("skin", "3", "champion", 0.7, None, None)
    text = artifact_markdown(result(ABSTAINED, registration=reg))
    assert "Unknown lesions: UNK above 0.3712 (dev coverage 0.951)" in text, text
    assert "accepted 0.8123 vs all 0.7801" in text, text
    assert "Registered `skin` v3 as **champion**" in text, text


def test_a_held_out_class_run_says_why_it_is_not_registered() -> None:
    held = ABSTAINED | {"test_unk_auroc": 0.81, "test_unk_recall": 0.4,
                        "test_balanced_accuracy_9": 0.6}  # fmt: skip
    text = artifact_markdown(result(held, registration=None, holdout={"class": "DF", "classes": 7}))
    assert "not registered: a held-out-class run (7 classes) is never registered" in text, text
    assert "DF" in text and "tracking.log_model is off" not in text, text
    assert "held-out class: AUROC 0.8100" in text, text


def test_without_abstention_or_registration_the_artifact_says_log_model_is_off() -> None:
    text = artifact_markdown(result({}, registration=None))
    assert "Unknown lesions" not in text and "tracking.log_model is off" in text, text


def test_the_artifact_says_which_stages_came_from_the_cache_and_how_to_force_them() -> None:
    text = artifact_markdown(result({}, stages={"split": "cached", "train": "ran"}))
    assert "From the cache (same inputs, config and code): split;" in text, text
    assert "refresh=true" in text, text
    assert "From the cache" not in artifact_markdown(result({})), "all ran: nothing to say"
