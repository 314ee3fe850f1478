"""A real sweep on small generated data: trials pruned, nested MLflow runs, resumed studies."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from skin.base.runs import RunPaths
from skin.search.sweep import trial_value
from skin.train.loop import CRASH_AFTER_EPOCH
from tests.helpers import tracking_db
from tests.recipes import TINY

pytestmark = [pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
SKIN = str(Path(sys.executable).parent / "skin")

# One learning rate learns, the other cannot: the sampler's seed puts a good trial first, so
# the median pruner (after one finished trial, from the first epoch) stops a bad one.
SPACE = {
    "sampler": "random",
    "seed": 2,
    "pruner": {"type": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
    "heartbeat": 1,
    "train.lr": {"type": "categorical", "choices": [0.003, 1.0e-7]},
    "train.weight_decay": {"type": "float", "low": 1.0e-6, "high": 1.0e-3, "log": True},
}


def recipe(tmp_path: Path) -> dict[str, object]:
    return {
        **TINY,
        "train.epochs": 2,
        "evaluate.bootstrap": 0,
        "work_dir": str(tmp_path / "work"),
        "tracking.tracking_uri": tracking_db(tmp_path),
        "tracking.experiment": f"sweep-{uuid.uuid4().hex[:6]}",
        "tracking.registered_model": f"skin-sweep-{uuid.uuid4().hex[:6]}",
    }


def space_file(tmp_path: Path, **extra: object) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({**SPACE, **extra}))
    return path


@pytest.mark.server
def test_a_sweep_prunes_nests_its_runs_registers_the_best_and_resumes(
    tmp_path: Path, sample_data: Path, prefect_api
) -> None:
    from flows.sweep import sweep_flow

    ov, space = recipe(tmp_path), space_file(tmp_path)
    first = sweep_flow(
        space_path=str(space), trials=4, name="t", data_uri=str(sample_data), overrides=ov
    )
    states = [t["state"] for t in first["trials"]]
    assert len(states) == 4 and "PRUNED" in states and "COMPLETE" in states, states
    assert first["stages"]["list-images"] == "ran"
    assert all(r["stages"].get("prepare-images") == "cached" for r in first["ran"]), first["ran"]

    client = MlflowClient(tracking_uri=ov["tracking.tracking_uri"])
    children = client.search_runs(
        [client.get_experiment_by_name(ov["tracking.experiment"]).experiment_id],
        f"tags.mlflow.parentRunId = '{first['parent_run_id']}'",
    )
    assert {r.info.run_id for r in children} == {t["run_id"] for t in first["trials"]}
    for run in children:
        assert run.data.tags["skin.sweep"] == "t" and "skin.trial" in run.data.tags
        pruned = run.data.tags["skin.trial_state"] == "pruned"
        assert run.info.status == ("KILLED" if pruned else "FINISHED"), run.data.tags
    parent = client.get_run(first["parent_run_id"])
    assert parent.data.tags["skin.best_run_id"] == first["best"]["run_id"]
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert {"sweep/trials.csv", "sweep/optimization_history.png"} <= logged, logged
    assert first["registration"]["alias"] == "champion", first["registration"]
    assert parent.data.tags["gate.images"].startswith("held back: "), parent.data.tags
    version = client.get_model_version(ov["tracking.registered_model"], "1")
    assert version.tags["gate.images"] == parent.data.tags["gate.images"], version.tags

    again = sweep_flow(
        space_path=str(space), trials=4, name="t", data_uri=str(sample_data), overrides=ov
    )
    assert again["parent_run_id"] == first["parent_run_id"], "the sweep's MLflow run resumes too"
    assert again["ran"] == [], "the study already holds its 4 trials"
    assert {t["number"] for t in again["trials"]} == {0, 1, 2, 3}


@pytest.mark.server
def test_a_trial_identical_to_a_pruned_one_gets_its_own_run_the_pruned_run_keeps_its_record(
    tmp_path: Path, sample_data: Path, prefect_api
) -> None:
    from flows.sweep import sweep_flow

    ov, space = recipe(tmp_path), space_file(tmp_path)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="p", storage=storage, direction="maximize")
    good = {"train.lr": 0.003, "train.weight_decay": 1.0e-4}
    bad = {"train.lr": 1.0e-7, "train.weight_decay": 1.0e-4}
    for params in (good, bad, bad):  # the third repeats the second exactly
        study.enqueue_trial(params)
    result = sweep_flow(
        space_path=str(space), trials=3, name="p", data_uri=str(sample_data), overrides=ov,
        storage=storage, register_best=False,
    )  # fmt: skip
    trials = {t["number"]: t for t in result["trials"]}
    assert trials[1]["state"] == "PRUNED", trials
    assert trials[1]["run_id"] != trials[2]["run_id"], "each trial has its own MLflow run"
    client = MlflowClient(tracking_uri=ov["tracking.tracking_uri"])
    pruned = client.get_run(trials[1]["run_id"])
    assert pruned.data.tags["skin.trial_state"] == "pruned", pruned.data.tags
    assert pruned.data.tags["skin.trial"] == "1" and pruned.info.status == "KILLED"


def skin_sweep(
    tmp_path: Path, data: Path, space: Path, home: str, crash: bool
) -> subprocess.CompletedProcess:
    """`skin --json sweep` in its own process (its own temporary Prefect API)."""
    env = {k: v for k, v in os.environ.items() if k != CRASH_AFTER_EPOCH}
    if crash:
        env[CRASH_AFTER_EPOCH] = "1"
    config = tmp_path / "config.yaml"
    nested: dict = {}
    for dotted, value in recipe(tmp_path).items():
        *parents, leaf = dotted.split(".")
        node = nested
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    nested["tracking"]["experiment"] = "sweep-kill"
    nested["tracking"]["registered_model"] = "skin-sweep-kill"
    config.write_text(yaml.safe_dump(nested))
    args = [
        "--data",
        str(data),
        "--space",
        str(space),
        "--trials",
        "2",
        "--name",
        "k",
        "--config",
        str(config),
    ]
    proc = subprocess.Popen(
        [SKIN, "--json", "sweep", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**env, "PREFECT_HOME": str(tmp_path / home)},
    )
    try:
        proc.wait(timeout=600)
    finally:  # a SIGKILLed `skin` leaves its temporary Prefect API running, holding the pipes
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    out, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_a_killed_sweep_resumes_its_study_retrying_the_dead_trial(
    tmp_path: Path, sample_data: Path
) -> None:
    space = space_file(tmp_path, pruner="none")
    killed = skin_sweep(tmp_path, sample_data, space, "prefect-a", crash=True)
    assert killed.returncode == -9, killed.stderr[-2000:]

    resumed = skin_sweep(tmp_path, sample_data, space, "prefect-b", crash=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    study = optuna.load_study(
        study_name="k", storage=f"sqlite:///{tmp_path / 'work' / 'sweeps.db'}"
    )
    by_number = {t.number: t for t in study.trials}
    assert by_number[0].state.name == "FAIL", (
        "the trial of the killed process is failed, not left running"
    )
    retry = next(t for t in study.trials if t.system_attrs.get("failed_trial") == 0)
    assert retry.state.name == "COMPLETE" and retry.params == by_number[0].params
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == 2, "the total is reached"
    outcome = RunPaths(str(tmp_path / "work"), retry.user_attrs["run_id"]).outcome
    assert json.loads(outcome.read_text())["resumed_from"] == 1, "the retry resumed the checkpoint"


@pytest.mark.server
def test_a_cross_validated_sweep_scores_trials_out_of_fold(
    tmp_path: Path, sample_data: Path, prefect_api
) -> None:
    from flows.sweep import sweep_flow

    ov, space = recipe(tmp_path), space_file(tmp_path, pruner={"type": "none"})
    result = sweep_flow(
        space_path=str(space),
        trials=1,
        name="cv",
        data_uri=str(sample_data),
        overrides=ov,
        cv_folds=2,
        register_best=False,
    )
    (trial,) = result["trials"]
    assert trial["state"] == "COMPLETE", trial
    client = MlflowClient(tracking_uri=ov["tracking.tracking_uri"])
    run = client.get_run(trial["run_id"])
    oof = pd.read_parquet(tmp_path / "work" / "cv" / trial["run_id"] / "oof_predictions.parquet")
    classes = [c.removeprefix("prob_") for c in oof if c.startswith("prob_")]
    assert (oof["manifest_split"] == "train").all(), "folds over train: dev is in no fold's pool"
    assert trial["value"] == pytest.approx(trial_value(oof, classes, "dev_balanced_accuracy")), (
        "the pooled out-of-fold balanced accuracy over train"
    )
    assert trial["value"] != pytest.approx(run.data.metrics["dev_balanced_accuracy"]), (
        "ranked by the pooled out-of-fold score, not the one dev split"
    )
    experiment = client.get_experiment_by_name(ov["tracking.experiment"]).experiment_id
    folds = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{trial['run_id']}'")
    assert sorted(r.data.tags["skin.cv_fold"] for r in folds) == ["0", "1"], "folds nest under it"
    first, second = sorted(folds, key=lambda r: r.info.start_time)
    history = client.get_metric_history(first.info.run_id, "best_epoch")
    trained = min(m.timestamp for m in history)  # logged first when its training ends
    assert second.info.start_time >= trained, (
        "a trial holds one gpu slot: its folds train one after another, not at once"
    )
