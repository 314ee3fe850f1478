"""The sweep's space file, its trials as config overrides, and the study's resume bookkeeping."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

from skin.base.config import load_config
from skin.search.sweep import (
    SpaceError,
    ask,
    beating,
    load_space,
    open_study,
    parse_space,
    searched_overrides,
    suggest,
    trial_config,
    trials_table,
    trials_to_run,
    validate_space,
)
from skin.track.tracking import NullTracker, tracked_run
from skin.train.loop import TrainingStopped

REPO = Path(__file__).resolve().parents[2]


def test_the_shipped_space_file_is_valid_against_the_demo_config() -> None:
    space = load_space(REPO / "configs" / "sweep.yaml")
    validate_space(space, load_config(REPO / "configs" / "demo.yaml"))
    assert "train.lr" in space.fields
    assert space.pruner.kind == "median"


def test_the_small_cpu_space_is_valid_against_the_demo_config() -> None:
    space = load_space(REPO / "configs" / "sweep-cpu.yaml")
    demo = load_config(REPO / "configs" / "demo.yaml")
    validate_space(space, demo)
    assert "train.image_size" not in space.fields and "model.name" not in space.fields


def test_the_overrides_a_space_replaces_are_named() -> None:
    space = load_space(REPO / "configs" / "sweep.yaml")
    given = {"train.image_size": 64, "model": {"freeze": "none"}, "train.epochs": 2}
    assert searched_overrides(space, given) == ["model.freeze", "train.image_size"], (
        "searched fields given as overrides, dotted or nested; others are not named"
    )
    assert searched_overrides(space, {"train.epochs": 2}) == []


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


def test_cross_validated_scoring_ranks_by_the_pooled_out_of_fold_metric_over_train(
    monkeypatch, tmp_path: Path
) -> None:
    import flows.cv as cv
    from benchmarks.decision_rates.search import CLASSES, null_sweep
    from flows.sweep import make_scorer
    from skin.evaluate.stage import EvalOutcome
    from skin.search.folds import CVOutcome
    from skin.search.sweep import trial_value

    sweep = null_sweep(np.random.default_rng(5), 300, 1)
    oof = sweep.dev.assign(
        manifest_split="train",
        **{f"prob_{c}": sweep.trials[0][:, i] for i, c in enumerate(CLASSES)},
    )
    oof.to_parquet(tmp_path / "oof.parquet")
    seen = {}

    def fake_cv(cfg, manifest, folds, *, parent_run_id=None, one_at_a_time=False):
        seen.update(folds=folds, parent=parent_run_id, serial=one_at_a_time)
        metrics = {"cv_oof_balanced_accuracy": 0.61, "cv_balanced_accuracy_mean": 0.7}
        return CVOutcome(
            parent_run_id or "p", [], metrics, str(tmp_path / "oof.parquet"), "", "", ""
        )

    monkeypatch.setattr(cv, "cross_validate", fake_cv)
    evaluated = EvalOutcome("trial-run", {"dev_balanced_accuracy": 0.9}, "", "")
    cfg = load_config()
    score = make_scorer("dev_balanced_accuracy", 3)(cfg, None, evaluated)
    assert score == pytest.approx(trial_value(oof, CLASSES, "dev_balanced_accuracy")), (
        "the pooled out-of-fold number over train"
    )
    assert seen == {"folds": 3, "parent": "trial-run", "serial": True}, (
        "fold runs nest under the trial's run and train one at a time (one gpu slot)"
    )
    oof.assign(manifest_split="dev").to_parquet(tmp_path / "oof.parquet")
    with pytest.raises(RuntimeError, match="out-of-fold rows include dev"):
        make_scorer("dev_balanced_accuracy", 3)(cfg, None, evaluated)
    with pytest.raises(ValueError, match="no out-of-fold counterpart"):
        make_scorer("dev_loss", 3)  # refused when the sweep starts, not after K+1 trainings


def test_a_study_resumed_on_other_data_or_another_space_is_refused(tmp_path: Path) -> None:
    import optuna

    from skin.search.sweep import SpaceError, pin_study

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

    from skin.evaluate.stage import _eval_metrics
    from skin.search.sweep import selectable_metrics
    from skin.stats.metrics import split_metrics

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


@pytest.mark.slow  # a simulation of 120 sweeps: out of `make test-fast`, still in `make test`
def test_the_best_of_20_null_trials_is_promoted_at_most_5_percent_gated_on_held_back_dev() -> None:
    from benchmarks.decision_rates.search import RESAMPLES, false_promotions

    # ISIC 2019's dev size (~2,600 images, 1-3 photos per lesion), the gate's own resamples: on
    # much smaller dev sets the gate alone passes 5 % for one null run, whatever the sweep does.
    runs, lesions = 120, 1300
    best = false_promotions(runs, 20, lesions, held=True, n_resamples=RESAMPLES)
    tolerance = 2 * math.sqrt(0.05 * 0.95 / runs)  # two Monte-Carlo standard errors
    assert best / runs <= 0.05 + tolerance, f"{best} of {runs} null sweeps promoted their best"
    same = false_promotions(30, 20, lesions, held=False, n_resamples=RESAMPLES, seed=1)
    assert same / 30 >= 0.10, (
        f"ranked and gated on the same images, {same} of 30: the simulation must show the fault"
        " it guards against"
    )


def test_dev_halves_keep_lesions_whole_and_do_not_depend_on_the_other_rows() -> None:
    from benchmarks.decision_rates.search import null_dev
    from skin.search.sweep import GATE, SELECT, dev_halves

    dev = null_dev(np.random.default_rng(0), 600)
    halves = dev_halves(dev)
    per_lesion = pd.Series(halves).groupby(dev["lesion_id"]).nunique()
    assert (per_lesion == 1).all(), "a lesion's photos are in one half"
    assert 0.4 < (halves == GATE).mean() < 0.6, "about half of dev is held back"
    some = dev.sample(frac=0.5, random_state=1)
    assert (dev_halves(some) == halves[some.index]).all(), "a row's half is its lesion's alone"
    assert set(dev_halves(dev.drop(columns="lesion_id"))) == {SELECT, GATE}


def test_a_trial_value_is_the_evaluation_metric_on_the_select_half() -> None:
    from benchmarks.decision_rates.search import CLASSES, null_sweep
    from skin.search.sweep import SELECT, dev_halves, half_score
    from skin.stats.metrics import flat_metrics, split_metrics

    sweep = null_sweep(np.random.default_rng(3), 300, 1)
    probs = sweep.trials[0]
    dev = sweep.dev.assign(**{f"prob_{c}": probs[:, i] for i, c in enumerate(CLASSES)})
    select = dev_halves(dev) == SELECT
    y = dev["label"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    logged = flat_metrics("dev", split_metrics(y[select], probs[select], CLASSES))
    for metric in ("dev_balanced_accuracy", "dev_log_loss", "dev_recall_MEL"):
        assert half_score(dev, CLASSES, metric) == pytest.approx(logged[metric], abs=1e-9), metric


def test_the_sweeps_best_trial_is_gated_on_the_held_back_half_and_its_tags_say_so(
    tmp_path: Path, monkeypatch
) -> None:
    import flows.sweep as fs
    from benchmarks.decision_rates.search import CLASSES, null_sweep
    from skin.base.runs import RunPaths
    from skin.release.registry import Registration
    from skin.search.sweep import GATE, dev_halves

    cfg = load_config(None, {"work_dir": str(tmp_path)})
    assert tuple(cfg.data.known_classes) == tuple(CLASSES)
    sweep = null_sweep(np.random.default_rng(0), 200, 1)
    dev = sweep.dev.assign(**{f"prob_{c}": sweep.trials[0][:, i] for i, c in enumerate(CLASSES)})
    report = RunPaths(cfg.work_dir, "best-run").report
    report.mkdir(parents=True)
    dev.to_parquet(report / "predictions_dev.parquet")
    seen: dict = {}

    def fake_call(task, stages, **kwargs):
        seen.update(kwargs, read=pd.read_parquet(kwargs["dev_predictions"]))
        return Registration("m", "2", "challenger", 0.6, 0.6, "1")

    version_tags: dict = {}
    monkeypatch.setattr(fs, "call", fake_call)
    monkeypatch.setattr(
        fs,
        "MLflowRegistry",
        lambda uri: type(
            "R", (), {"set_version_tags": lambda s, n, v, t: version_tags.update(t)}
        )(),
    )
    parent = type("P", (), {"tags": {}, "set_tags": lambda s, t: s.tags.update(t)})()
    best = {"run_id": "best-run", "model_uri": "runs:/best-run/model", "manifest_uri": None}
    fs.register_best_trial(best, cfg, None, {}, parent)

    held = seen["read"]
    assert set(held["key"]) == set(dev["key"][dev_halves(dev) == GATE]), (
        "the gate reads exactly the held-back half of the best trial's dev predictions"
    )
    assert 0 < len(held) < len(dev)
    for tags in (version_tags, parent.tags):
        assert tags["gate.images"].startswith(f"held back: {len(held)} of {len(dev)} dev images"), (
            tags
        )


def test_a_sweep_resumed_right_after_a_crash_is_not_one_trial_short(tmp_path: Path) -> None:
    from skin.search.sweep import settle

    space = parse_space({"heartbeat": 1, "train.lr": {"type": "float", "low": 0.1, "high": 1}})
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    study = open_study("s", url, space)
    done = ask(study)
    suggest(done, space)
    study.tell(done, 0.5)
    dead = ask(study)
    suggest(dead, space)
    study._storage.record_heartbeat(dead._trial_id)  # it beat just now; then its process died
    resumed = open_study("s", url, space)  # resumed within 2 × heartbeat of the crash
    t0 = time.monotonic()
    settle(resumed, space.heartbeat)
    assert time.monotonic() - t0 < 6 * space.heartbeat, "the wait is bounded by the grace period"
    assert trials_to_run(resumed, 2) == 1, "the dead trial's retry is still to run"
    states = {t.number: t.state.name for t in resumed.get_trials()}
    assert states[dead.number] == "FAIL", states
