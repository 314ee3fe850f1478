"""The promotion gate: its policy alone, and against a real MLflow registry (SQLite in tmp_path)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from skin.release.registry import CHALLENGER, CHAMPION, GATE_METRIC, Champion, decide, gate
from skin.track.tracking import CHECKPOINT_SHA_TAG
from tasks.events import emit_promotion
from tests.helpers import tracking_db


def test_promotion_gate_needs_a_strictly_better_dev_score() -> None:
    assert decide(0.7, None) == "champion", "the first model becomes champion"
    assert decide(0.71, 0.70) == "champion"
    assert decide(0.70, 0.70) == "challenger", "a tie does not replace the champion"
    assert decide(0.60, 0.70) == "challenger", "a regression never replaces the champion"


def test_only_no_champion_at_all_promotes_unconditionally() -> None:
    alias, reason = gate(0.40, None)
    assert alias == CHAMPION, f"the first model becomes champion: {reason}"
    alias, reason = gate(0.99, Champion("3", None, "run r1 not found"))
    assert alias == CHALLENGER, "a champion whose score cannot be read is never replaced"
    assert "v3" in reason and "run r1 not found" in reason, f"the reason names why: {reason}"
    assert gate(0.91, Champion("3", 0.90))[0] == CHAMPION
    assert gate(0.90, Champion("3", 0.90))[0] == CHALLENGER


# --------------------------------------------------------------------------- a real registry


@pytest.fixture
def store(tmp_path: Path) -> str:
    return tracking_db(tmp_path)


def scored_model(uri: str, score: float | None, sha: str | None = None) -> tuple[str, str]:
    """A run with a dev score and a logged model of it (its checkpoint's sha256 tagged when
    given, as `MLflowTracker.log_model` does): (run id, models:/m-ID)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("gate") or client.get_experiment(
        client.create_experiment("gate")
    )
    run = client.create_run(exp.experiment_id)
    if score is not None:
        client.log_metric(run.info.run_id, GATE_METRIC, score)
    client.set_terminated(run.info.run_id)
    tags = {CHECKPOINT_SHA_TAG: sha} if sha else None
    model = client.create_logged_model(
        exp.experiment_id, name="model", source_run_id=run.info.run_id, tags=tags
    )
    return run.info.run_id, f"models:/{model.model_id}"


def register(uri: str, name: str, score: float | None, sha: str | None = None):
    from skin.release.registry import register_and_gate

    run_id, model_uri = scored_model(uri, score, sha)
    return register_and_gate(uri, name, model_uri, run_id)


def garbage_collect(uri: str, run_id: str) -> None:
    """`mlflow gc`: the deleted run is gone for good, metrics and all."""
    cmd = [sys.executable, "-m", "mlflow", "gc", "--backend-store-uri", uri, "--tracking-uri", uri]
    cmd += ["--run-ids", run_id]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, f"mlflow gc failed: {done.stderr[-2000:]}"


def test_only_a_strictly_better_model_takes_the_champion_alias(store: str) -> None:
    from mlflow import MlflowClient

    name = f"gate-{uuid.uuid4().hex[:6]}"
    first = register(store, name, 0.80)
    assert (first.alias, first.champion_score) == (CHAMPION, None), first
    worse = register(store, name, 0.70)
    assert worse.alias == CHALLENGER and worse.champion_score == 0.80, worse
    better = register(store, name, 0.85)
    assert better.alias == CHAMPION and better.previous_champion == first.version, better
    client = MlflowClient(tracking_uri=store)
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == better.version
    assert str(client.get_model_version_by_alias(name, CHALLENGER).version) == worse.version


def test_a_champion_whose_run_is_gone_is_not_replaced_by_a_worse_model(store: str) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store)
    name = f"gate-{uuid.uuid4().hex[:6]}"
    champion = register(store, name, 0.90)
    champion_run = client.get_model_version(name, champion.version).run_id
    client.delete_run(champion_run)
    garbage_collect(store, champion_run)

    worse = register(store, name, 0.40)

    assert worse.alias == CHALLENGER, f"a 0.40 model replaced a 0.90 champion: {worse}"
    now = client.get_model_version_by_alias(name, CHAMPION)
    assert str(now.version) == champion.version, "the champion keeps its alias"
    reason = client.get_model_version(name, worse.version).tags.get("gate_reason", "")
    assert "cannot be read" in reason and champion_run in reason, (
        f"the reason is recorded: {reason}"
    )
    assert worse.reason == reason, worse


def test_a_champion_registered_without_a_run_is_not_replaced(store: str) -> None:
    """A version made by hand (no source run): its score cannot be read, so nothing replaces it."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store)
    name = f"gate-{uuid.uuid4().hex[:6]}"
    client.create_registered_model(name)
    model_id = scored_model(store, 0.5)[1].removeprefix("models:/")
    location = client.get_logged_model(model_id).artifact_location
    by_hand = client.create_model_version(name, source=location)
    client.set_registered_model_alias(name, CHAMPION, by_hand.version)
    challenger = register(store, name, 0.99)
    assert challenger.alias == CHALLENGER, challenger
    assert "no source run" in challenger.reason, challenger


def test_a_model_without_a_dev_score_is_refused_by_name(store: str) -> None:
    from skin.release.registry import RegistryError

    with pytest.raises(RegistryError, match=f"no {GATE_METRIC}.*evaluate"):
        register(store, f"gate-{uuid.uuid4().hex[:6]}", None)


def test_registering_does_not_touch_the_global_tracking_uri(store: str) -> None:
    import mlflow

    before = mlflow.get_tracking_uri()
    register(store, f"gate-{uuid.uuid4().hex[:6]}", 0.5)
    assert mlflow.get_tracking_uri() == before, "the registry uses its own client"


def test_the_champions_own_checkpoint_is_not_registered_again(store: str) -> None:
    """Re-registering the champion's weights (a re-run after a code change that left them
    alone) would make a challenger of the champion against itself: no new version."""
    from mlflow import MlflowClient

    name = f"gate-{uuid.uuid4().hex[:6]}"
    first = register(store, name, 0.80, sha="a" * 64)
    again = register(store, name, 0.80, sha="a" * 64)
    client = MlflowClient(tracking_uri=store)
    versions = client.search_model_versions(f"name='{name}'")
    assert len(versions) == 1, f"the same checkpoint became v{again.version}: {again}"
    assert (again.version, again.alias) == (first.version, CHAMPION), again
    assert f"identical to champion v{first.version}" in again.reason, again
    assert not again.created and not emit_promotion(again, "r", store), "nothing was promoted"
    other = register(store, name, 0.81, sha="b" * 64)
    assert other.version == "2" and other.created, "other weights are a new version"
