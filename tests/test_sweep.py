"""The sweep's space file, its trials as config overrides, and the study's resume bookkeeping."""

from __future__ import annotations

import re
import time
from pathlib import Path

import optuna
import pytest

from skin.config import load_config
from skin.sweep import (
    SpaceError,
    ask,
    beating,
    load_space,
    open_study,
    parse_space,
    suggest,
    trial_config,
    trials_table,
    trials_to_run,
    validate_space,
)
from skin.tracking import NullTracker, tracked_run
from skin.train import TrainingStopped

REPO = Path(__file__).resolve().parents[1]


def test_the_shipped_space_file_is_valid_against_the_demo_config() -> None:
    space = load_space(REPO / "configs" / "sweep.yaml")
    validate_space(space, load_config(REPO / "configs" / "demo.yaml"))
    assert "train.lr" in space.fields
    assert space.pruner.kind == "median"


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ({"train.lr": {"type": "float", "low": 0.1}}, "train.lr"),
        ({"train.lr": {"type": "float", "low": 0.1, "high": 0.01}}, "train.lr"),
        ({"train.lr": {"type": "float", "low": 0.0, "high": 1.0, "log": True}}, "train.lr"),
        ({"model.freeze": {"type": "categorical", "choices": []}}, "model.freeze"),
        ({"model.freeze": {"type": "choice", "choices": ["head"]}}, "model.freeze"),
        ({"model.freeze": "head"}, "model.freeze"),
        (
            {"train.lr": {"type": "float", "low": 0.1, "high": 1, "step": 0.1, "log": True}},
            "train.lr",
        ),
        ({"pruner": "hyperband", "train.lr": {"type": "float", "low": 0.1, "high": 1}}, "pruner"),
        ({"sampler": "cma", "train.lr": {"type": "float", "low": 0.1, "high": 1}}, "sampler"),
        ({"epochs": 3}, "epochs"),
        (
            {"metric": "test_accuracy", "train.lr": {"type": "float", "low": 0.1, "high": 1}},
            "test_accuracy",
        ),
    ],
)
def test_a_bad_spec_is_refused_naming_the_entry(raw: dict, named: str) -> None:
    with pytest.raises(SpaceError, match=named.replace(".", r"\.")):
        parse_space(raw)


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ({"train.learning_rate": {"type": "float", "low": 0.1, "high": 1}}, "train.learning_rate"),
        ({"train.augment": {"type": "categorical", "choices": [True]}}, "train.augment"),
        ({"model.freeze": {"type": "categorical", "choices": ["head", "middle"]}}, "model.freeze"),
        ({"model.drop_rate": {"type": "float", "low": 0.0, "high": 1.5}}, "model.drop_rate"),
        ({"model.name": {"type": "categorical", "choices": ["no_such_net"]}}, "model.name"),
    ],
)
def test_a_field_or_value_the_config_refuses_fails_validation_naming_it(
    raw: dict, named: str
) -> None:
    space = parse_space(raw)
    with pytest.raises(SpaceError, match=named.replace(".", r"\.")):
        validate_space(space, load_config())


def test_a_trial_becomes_dotted_overrides_that_make_a_valid_config() -> None:
    space = parse_space(
        {
            "train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            "train.image_size": {"type": "int", "low": 32, "high": 64, "step": 32},
            "model.freeze": {"type": "categorical", "choices": ["head", "last:1"]},
            "train.augment.enabled": {"type": "categorical", "choices": [True]},
        }
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    overrides = suggest(study.ask(), space)
    assert set(overrides) == set(space.fields)
    assert 1e-4 <= overrides["train.lr"] <= 1e-2
    assert overrides["train.image_size"] in (32, 64)
    cfg = trial_config(load_config(None, {"train.epochs": 2}), overrides)
    assert cfg.train.augment.enabled is True
    assert cfg.train.epochs == 2, "the base config's own settings stay"
    assert cfg.model.freeze == overrides["model.freeze"]


def test_trials_to_run_counts_finished_trials_toward_the_total(tmp_path: Path) -> None:
    space = parse_space({"train.lr": {"type": "float", "low": 0.1, "high": 1}})
    study = open_study("s", f"sqlite:///{tmp_path / 'db.sqlite'}", space)
    assert trials_to_run(study, 4) == 4
    for state in ("complete", "pruned", "fail"):
        trial = ask(study)
        suggest(trial, space)
        if state == "complete":
            study.tell(trial, 0.5)
        else:
            study.tell(trial, state=getattr(optuna.trial.TrialState, state.upper()))
    assert trials_to_run(study, 4) == 1
    assert trials_to_run(study, 2) == 0
    again = open_study("s", f"sqlite:///{tmp_path / 'db.sqlite'}", space)
    assert len(again.trials) == 3, "the same name loads the same study"
    table = trials_table(again)
    assert list(table["state"]) == ["COMPLETE", "PRUNED", "FAIL"], "scored trials first"


def test_a_trial_whose_process_died_is_failed_and_its_parameters_retried(tmp_path: Path) -> None:
    space = parse_space({"heartbeat": 1, "train.lr": {"type": "float", "low": 0.1, "high": 1}})
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    study = open_study("s", url, space)
    dead = ask(study)
    lr = suggest(dead, space)["train.lr"]
    with beating(study, dead._trial_id, 1):
        pass  # one beat, then silence: the process is gone
    time.sleep(3)  # past the grace period (2 heartbeats)
    resumed = open_study("s", url, space)
    assert trials_to_run(resumed, 2) == 1, "the dead trial is not counted as running"
    retry = ask(resumed)
    states = {t.number: t.state.name for t in resumed.get_trials()}
    assert states[dead.number] == "FAIL"
    assert suggest(retry, space)["train.lr"] == lr, "the retry takes the dead trial's parameters"
    assert trials_to_run(resumed, 2) == 1, "a stale trial and its retry count as one"


class _Recorder(NullTracker):
    closed: list[str]

    def close(self, status: str = "FINISHED") -> None:
        self.closed.append(status)


def test_a_stopped_training_closes_its_run_killed_not_failed() -> None:
    tracker = _Recorder("r1")
    tracker.closed = []
    with pytest.raises(TrainingStopped), tracked_run(tracker):
        raise TrainingStopped(2, "r1")
    assert tracker.closed == ["KILLED"]


def test_cross_validated_scoring_ranks_by_the_pooled_out_of_fold_metric(monkeypatch) -> None:
    import flows.cv as cv
    from flows.sweep import make_scorer
    from skin.folds import CVOutcome
    from skin.stages import EvalOutcome

    seen = {}

    def fake_cv(cfg, manifest, folds, *, parent_run_id=None, one_at_a_time=False):
        seen.update(folds=folds, parent=parent_run_id, serial=one_at_a_time)
        metrics = {"cv_oof_balanced_accuracy": 0.61, "cv_balanced_accuracy_mean": 0.7}
        return CVOutcome(parent_run_id or "p", [], metrics, "", "", "", "")

    monkeypatch.setattr(cv, "cross_validate", fake_cv)
    evaluated = EvalOutcome("trial-run", {"dev_balanced_accuracy": 0.9}, "", "")
    score = make_scorer("dev_balanced_accuracy", 3)
    assert score(None, None, evaluated) == 0.61, "the out-of-fold number, not the dev split's"
    assert seen == {"folds": 3, "parent": "trial-run", "serial": True}, (
        "fold runs nest under the trial's run and train one at a time (one gpu slot)"
    )
    with pytest.raises(ValueError, match="no out-of-fold counterpart"):
        make_scorer("dev_loss", 3)  # refused when the sweep starts, not after K+1 trainings
    assert make_scorer("dev_balanced_accuracy", None)(None, None, evaluated) == 0.9


def test_a_study_resumed_on_other_data_or_another_space_is_refused(tmp_path: Path) -> None:
    import optuna

    from skin.sweep import SpaceError, pin_study

    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 's.db'}")
    facts = {"data_uri": "s3://b/isic", "manifest_hash": "abc", "space": "d1"}
    pin_study(study, facts)
    again = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 's.db'}")
    pin_study(again, facts)  # the same sweep resumes
    with pytest.raises(SpaceError, match=r"manifest_hash 'abc', not 'grown'.*--name"):
        pin_study(again, {**facts, "manifest_hash": "grown"})
    with pytest.raises(SpaceError, match="space"):
        pin_study(again, {**facts, "space": "d2"})


@pytest.mark.parametrize(
    "raw",
    [
        {"split.seed": {"type": "int", "low": 1, "high": 9}},
        {"split.group_by_lesion": {"type": "categorical", "choices": [True, False]}},
        {"split.fractions": {"type": "categorical", "choices": ["0.8,0.1,0.1", "0.7,0.15,0.15"]}},
        {"data.holdout_class": {"type": "categorical", "choices": [None, "DF"]}},
    ],
)
def test_a_space_that_would_change_dev_or_test_is_refused(raw: dict) -> None:
    (name,) = raw
    space = parse_space(raw)
    with pytest.raises(SpaceError, match=re.escape(name) + ".*dev or test"):
        validate_space(space, load_config())


def test_a_space_may_search_how_train_is_balanced() -> None:
    space = parse_space(
        {"split.balance": {"type": "categorical", "choices": ["undersample", "none"]}}
    )
    validate_space(space, load_config())  # train only: dev and test stay the sweep's


@pytest.mark.parametrize(
    ("metric", "pruner"),
    [("dev_loss", "median"), ("dev_loss", "none"), ("dev_auc", "none"), ("test_accuracy", "none")],
)
def test_a_metric_the_evaluation_never_logs_for_dev_is_refused_before_anything_runs(
    metric: str, pruner: str
) -> None:
    raw = {"metric": metric, "pruner": pruner, "train.lr": {"type": "float", "low": 0.1, "high": 1}}
    with pytest.raises(SpaceError, match=metric):
        validate_space(parse_space(raw), load_config())


def test_every_dev_metric_the_evaluation_logs_may_rank_trials() -> None:
    import numpy as np

    from skin.evaluate import split_metrics
    from skin.stages import _eval_metrics
    from skin.sweep import selectable_metrics

    cfg = load_config()
    classes = cfg.data.known_classes
    rng = np.random.default_rng(0)
    y = np.arange(40) % len(classes)
    probs = rng.dirichlet(np.ones(len(classes)), size=40)
    scored = {s: split_metrics(y, probs, classes) for s in ("train", "dev", "test")}
    logged = {k for k in _eval_metrics(scored, 0.9, 3) if k.startswith("dev_")}
    allowed = set(selectable_metrics(classes))
    assert {"dev_log_loss", "dev_balanced_accuracy", "dev_macro_auc", "dev_recall_MEL"} <= allowed
    assert allowed <= logged, f"names the evaluation does not log: {allowed - logged}"
    for metric in ("dev_log_loss", "dev_recall_MEL"):
        raw = {
            "metric": metric,
            "pruner": "none",
            "train.lr": {"type": "float", "low": 0.1, "high": 1},
        }
        validate_space(parse_space(raw), cfg)
    assert parse_space({**raw, "metric": "dev_log_loss"}).direction == "minimize"
