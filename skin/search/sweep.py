"""Hyperparameter sweeps: the space file, its validation, trials as config overrides, the study.

A space file (`configs/sweep.yaml`) maps dotted config fields to what Optuna may try, beside a
few study settings:

    metric: dev_balanced_accuracy     # what a trial scores: a dev metric the evaluation logs,
                                      # on dev's select half (the other half gates the best)
    direction: maximize
    sampler: tpe                      # tpe | random
    pruner: {type: median, n_startup_trials: 2, n_warmup_steps: 1}   # median | none
    train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    model.freeze: {type: categorical, choices: [head, "last:1"]}

Optuna is imported inside the functions that need it; the core training path never sees it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import yaml

from skin.base.config import ConfigError, PipelineConfig, load_config, pick
from skin.base.plots import pyplot
from skin.data.stages import SPLIT_ENTRIES
from skin.evaluate.compare import probabilities
from skin.stats.bootstrap import balanced_from_recall, hit_features, recall_from_sums
from skin.stats.metrics import flat_metrics, split_metrics

if TYPE_CHECKING:
    import optuna

SETTINGS = ("metric", "direction", "sampler", "pruner", "seed", "heartbeat")
EPOCH_METRICS = {
    "dev_balanced_accuracy": "maximize",
    "dev_accuracy": "maximize",
    "dev_loss": "minimize",
}
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "none")
KINDS = {"float": ("low", "high", "log", "step"), "int": ("low", "high", "log", "step")}
STUDY_FILE = "sweeps.db"
STORAGE_ENV = "SKIN_SWEEP_STORAGE"
PARENT_RUN = "mlflow_parent_run_id"  # study user attribute: the sweep's MLflow run
FINISHED = ("COMPLETE", "PRUNED", "FAIL")
# Dev's two halves: trials are ranked on SELECT; the best one is gated on GATE, which no ranking read.
SELECT, GATE = "select", "gate"
# What decides the dev and test images and their labels: the whole data section (which images,
# which classes) and the split settings that assign rows (the split's own key, SPLIT_ENTRIES).
# Trials differing in these would be scored on different images: they could not be compared.
DEV_TEST_FIELDS = ("data", *(f"split.{entry}" for entry in SPLIT_ENTRIES))


log = logging.getLogger(__name__)


class SpaceError(ConfigError):
    """The space file is wrong; the message names the entry and the fix."""


@dataclass(frozen=True)
class Param:
    """One searched config field: a float or int range, or a list of choices."""

    field: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def candidates(self) -> list[Any]:
        """Values that must each make a valid config: the ends of a range, or every choice."""
        if self.kind == "categorical":
            return list(self.choices)
        cast = int if self.kind == "int" else float
        return [cast(self.low), cast(self.high)]


@dataclass(frozen=True)
class Pruning:
    """The pruner: median (stop a trial below the median of earlier ones) or none."""

    kind: str = "median"
    n_startup_trials: int = 5
    n_warmup_steps: int = 1
    interval_steps: int = 1


@dataclass(frozen=True)
class Space:
    """A parsed space file: the searched fields and the study's settings."""

    params: tuple[Param, ...]
    metric: str = "dev_balanced_accuracy"
    direction: str = "maximize"
    sampler: str = "tpe"
    seed: int | None = None
    pruner: Pruning = field(default_factory=Pruning)
    heartbeat: int = 30  # seconds; a RUNNING trial silent for twice this is failed and retried

    @property
    def fields(self) -> list[str]:
        return [p.field for p in self.params]


def load_space(path: str | Path) -> Space:
    """The space file, parsed; every error names the entry at fault."""
    p = Path(path)
    if not p.is_file():
        raise SpaceError(f"space file not found: {p}")
    raw = yaml.safe_load(p.read_text()) or {}
    if not isinstance(raw, dict):
        raise SpaceError(f"{p}: the top level must be a mapping of config fields to ranges")
    return parse_space(raw, source=str(p))


def parse_space(raw: dict[str, Any], source: str = "space") -> Space:
    """A space from its mapping (see the module docstring)."""
    unknown = [k for k in raw if "." not in k and k not in SETTINGS]
    if unknown:
        raise SpaceError(
            f"{source}: unknown setting(s) {unknown}; settings are {list(SETTINGS)}, and searched"
            " fields are dotted config fields such as train.lr"
        )
    params = tuple(_param(name, spec, source) for name, spec in raw.items() if "." in name)
    if not params:
        raise SpaceError(f"{source}: no field to search (add e.g. train.lr: {{type: float, ...}})")
    metric = str(raw.get("metric", "dev_balanced_accuracy"))
    if not metric.startswith("dev_"):
        raise SpaceError(
            f"{source}: metric {metric!r} is not a dev metric: trials are ranked on dev (never on"
            " train or test); use e.g. dev_balanced_accuracy"
        )
    direction = str(raw.get("direction", _direction(metric)))
    if direction not in ("maximize", "minimize"):
        raise SpaceError(f"{source}: direction must be maximize or minimize, got {direction!r}")
    sampler = str(raw.get("sampler", "tpe"))
    if sampler not in SAMPLERS:
        raise SpaceError(f"{source}: sampler must be one of {SAMPLERS}, got {sampler!r}")
    pruner = _pruning(raw.get("pruner", "median"), source)
    if pruner.kind != "none" and metric not in EPOCH_METRICS:
        raise SpaceError(
            f"{source}: metric {metric!r} is not scored each epoch, so trials cannot be pruned on"
            f" it; use one of {list(EPOCH_METRICS)} or set pruner: none"
        )
    heartbeat = int(raw.get("heartbeat", 30))
    if heartbeat < 1:
        raise SpaceError(f"{source}: heartbeat must be a whole number of seconds ≥ 1")
    seed = raw.get("seed")
    return Space(
        params, metric, direction, sampler, None if seed is None else int(seed), pruner, heartbeat
    )


def _direction(metric: str) -> str:
    """What a metric wants by default: losses and calibration errors go down, scores up."""
    if metric in EPOCH_METRICS:
        return EPOCH_METRICS[metric]
    return "minimize" if metric.endswith(("loss", "ece")) else "maximize"


def selectable_metrics(classes: Sequence[str]) -> list[str]:
    """The dev metrics the evaluation logs and a trial can be ranked by: the names
    `flat_metrics("dev", split_metrics(...))` gives, read off a tiny scored example (the code that
    logs them names them, so this list cannot go stale)."""
    k = len(classes)
    y = np.arange(2 * k) % k  # every class present: each per-class metric is defined
    probs = np.random.default_rng(0).dirichlet(np.ones(k), size=2 * k)
    return sorted(flat_metrics("dev", split_metrics(y, probs, list(classes))))


def _check_metric(space: Space, classes: Sequence[str]) -> None:
    """The space's metric is one the evaluation logs for dev, before any trial trains."""
    logged = selectable_metrics(classes)
    if space.metric not in logged:
        close = [m for m in logged if space.metric.removeprefix("dev_") in m][:5]
        raise SpaceError(
            f"space metric {space.metric!r} is never logged by the evaluation, so no trial could"
            f" be scored on it; it logs {close or logged[:8]} among {len(logged)} dev metrics"
            " (e.g. dev_balanced_accuracy, dev_log_loss, dev_macro_auc, dev_recall_MEL)"
        )


def _param(name: str, spec: Any, source: str) -> Param:
    """One field's spec: {type: float|int, low, high[, log, step]} or {type: categorical, choices}."""
    where = f"{source}: {name}"
    if not isinstance(spec, dict) or "type" not in spec:
        raise SpaceError(f"{where}: give a mapping with a type (float, int or categorical)")
    kind = spec["type"]
    if kind == "categorical":
        choices = spec.get("choices")
        extra = set(spec) - {"type", "choices"}
        if not isinstance(choices, list) or not choices or extra:
            raise SpaceError(f"{where}: categorical takes only a non-empty list `choices`")
        bad = [c for c in choices if c is not None and not isinstance(c, bool | int | float | str)]
        if bad:
            raise SpaceError(
                f"{where}: choices must be plain values (text, numbers, true/false), got {bad}"
            )
        return Param(name, kind, choices=tuple(choices))
    if kind not in KINDS:
        raise SpaceError(f"{where}: type must be float, int or categorical, got {kind!r}")
    extra = set(spec) - {"type", *KINDS[kind]}
    if extra or "low" not in spec or "high" not in spec:
        raise SpaceError(
            f"{where}: {kind} takes low, high and optionally log, step; got {sorted(spec)}"
        )
    low, high = spec["low"], spec["high"]
    if (
        not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high))
        or low >= high
    ):
        raise SpaceError(
            f"{where}: low and high must be numbers with low < high, got {low!r}, {high!r}"
        )
    if spec.get("log") and spec.get("step") is not None:
        raise SpaceError(f"{where}: a range is either log or stepped, not both")
    if spec.get("log") and low <= 0:
        raise SpaceError(f"{where}: a log range needs low > 0, got {low!r}")
    return Param(name, kind, low, high, bool(spec.get("log", False)), spec.get("step"))


def _pruning(spec: Any, source: str) -> Pruning:
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, dict) or spec.get("type", "median") not in PRUNERS:
        raise SpaceError(
            f"{source}: pruner must be one of {PRUNERS} (or {{type: median, ...}}), got {spec!r}"
        )
    options = {k: v for k, v in spec.items() if k != "type"}
    allowed = {"n_startup_trials", "n_warmup_steps", "interval_steps"}
    if set(options) - allowed:
        raise SpaceError(f"{source}: pruner options are {sorted(allowed)}, got {sorted(options)}")
    return Pruning(spec.get("type", "median"), **{k: int(v) for k, v in options.items()})


def searched_overrides(space: Space, overrides: Mapping[str, Any]) -> list[str]:
    """The overrides the space also searches: each trial's value replaces them (the space is
    what the study compares; the overrides are the base every trial starts from)."""
    given = {
        name
        for key, value in overrides.items()
        for name in (_flat(value, f"{key}.") if isinstance(value, dict) else [key])
    }
    return [f for f in space.fields if f in given]


def validate_space(space: Space, base: PipelineConfig) -> None:
    """Every searched field exists in the config and every candidate value makes a valid one;
    none would change the dev or test images (trials are compared on them); the metric is one
    the evaluation logs."""
    _check_metric(space, base.data.known_classes)
    for param in space.params:
        _refuse_dev_test_field(param.field)
        try:
            value = pick(base, param.field)
        except ConfigError as err:
            raise SpaceError(f"space field {param.field!r}: not a config field ({err})") from err
        if isinstance(value, dict):
            raise SpaceError(
                f"space field {param.field!r} is a whole section: name one of its fields"
                f" ({', '.join(f'{param.field}.{k}' for k in value)})"
            )
        for candidate in param.candidates():
            try:
                trial_config(base, {param.field: candidate})
            except ConfigError as err:
                raise SpaceError(
                    f"space field {param.field!r}: value {candidate!r} is invalid: {err}"
                ) from err


def _refuse_dev_test_field(name: str) -> None:
    """A field that changes which images are dev or test (or their labels) cannot be searched."""
    hit = next((f for f in DEV_TEST_FIELDS if name == f or name.startswith(f"{f}.")), None)
    if hit is not None:
        raise SpaceError(
            f"space field {name!r} would change the dev or test images ({hit} decides them):"
            " trials scored on different images cannot be compared. Remove it from the space and"
            " run one sweep per setting (--name); split.balance (train only) may be searched"
        )


def trial_config(base: PipelineConfig, overrides: dict[str, Any]) -> PipelineConfig:
    """The base config with a trial's dotted overrides, validated as any config is."""
    return load_config(None, {**_flat(base.model_dump(mode="json")), **overrides})


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= _flat(value, f"{name}.")
        else:
            out[name] = value
    return out


def suggest(trial: optuna.trial.Trial, space: Space) -> dict[str, Any]:
    """The trial's dotted overrides: one value per searched field, chosen by the sampler."""
    out: dict[str, Any] = {}
    for p in space.params:
        if p.kind == "categorical":
            out[p.field] = trial.suggest_categorical(p.field, list(p.choices))
        elif p.kind == "int":
            step = int(p.step or 1)
            out[p.field] = trial.suggest_int(p.field, int(p.low), int(p.high), step=step, log=p.log)
        else:
            out[p.field] = trial.suggest_float(p.field, p.low, p.high, step=p.step, log=p.log)
    return out


# --------------------------------------------------------------------------- dev's two halves


def _stable(text: str) -> int:
    """A number from text that is the same in every process and on every machine."""
    return int.from_bytes(hashlib.blake2b(f"skin.sweep:{text}".encode(), digest_size=8).digest())


def dev_halves(dev: pd.DataFrame) -> np.ndarray:
    """Each dev row's half, SELECT or GATE: whole lesions (a lesion's photos stay together; a
    row without one is its own), each by a hash of its id alone, so every trial, the gate, a
    resumed sweep and `--cv`'s pooled rows draw the same line whatever other rows are present."""
    lesion = dev["lesion_id"] if "lesion_id" in dev else pd.Series(np.nan, index=dev.index)
    group = lesion.where(lesion.notna(), dev["key"]).astype(str)
    half = {g: (SELECT, GATE)[_stable(g) % 2] for g in group.unique()}
    return group.map(half).to_numpy()


def held_back(dev: pd.DataFrame, halves: np.ndarray | None = None) -> pd.DataFrame:
    """The dev rows no trial's ranking read: the gate's evidence for the sweep's best trial."""
    halves = dev_halves(dev) if halves is None else halves
    return dev[halves == GATE].reset_index(drop=True)


def half_score(
    dev: pd.DataFrame, classes: Sequence[str], metric: str, halves: np.ndarray | None = None
) -> float:
    """A trial's value: `metric` (a dev metric the evaluation logs) on the SELECT half of its
    dev predictions (`predictions_dev.parquet`); `halves`: `dev_halves(dev)`, if known."""
    halves = dev_halves(dev) if halves is None else halves
    return trial_value(dev[halves == SELECT], classes, metric)


def trial_value(rows: pd.DataFrame, classes: Sequence[str], metric: str) -> float:
    """`metric` on these prediction rows, as the evaluation computes it (balanced accuracy, the
    gate's metric, by the bootstrap's own counting: the same number, a thousand times faster)."""
    y = pd.Categorical(rows["label"], categories=list(classes)).codes.astype(np.int64)
    if (y < 0).any():
        raise ValueError(f"dev labels {sorted(set(rows['label']) - set(classes))} not in {classes}")
    probs = probabilities(rows, classes)
    if metric == "dev_balanced_accuracy":
        sums = hit_features(y, probs.argmax(1), len(classes)).sum(0)
        return float(balanced_from_recall(recall_from_sums(sums)))
    probs = probs / probs.sum(axis=1, keepdims=True)  # float32 on disk: sums off by ~1e-7
    scored = flat_metrics("dev", split_metrics(y, probs, list(classes)))
    if metric not in scored:
        raise KeyError(
            f"{metric!r} cannot be scored on the {len(rows)} dev images of the ranking half (a"
            " class absent there?); rank by dev_balanced_accuracy"
        )
    return float(scored[metric])


# --------------------------------------------------------------------------- the study


def default_storage(work_dir: str | Path) -> str:
    """The study database when none is given: $SKIN_SWEEP_STORAGE (the compose stack sets its
    PostgreSQL), else SQLite in the working folder."""
    if url := os.environ.get(STORAGE_ENV):
        return url
    path = Path(work_dir).resolve() / STUDY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def open_study(name: str, storage_url: str, space: Space) -> optuna.Study:
    """The named study, created or loaded (a sweep started again resumes it). Trials report a
    heartbeat; one silent for 2 × `space.heartbeat` s (its process died) is failed and its
    parameters queued again once."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():  # heartbeats and retries are "experimental" since Optuna 2
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
        storage = optuna.storages.RDBStorage(
            storage_url, heartbeat_interval=space.heartbeat, heartbeat_stale_trial_callback=retry
        )
    return optuna.create_study(
        study_name=name,
        storage=storage,
        direction=space.direction,
        sampler=_sampler(space),
        pruner=_pruner(space.pruner),
        load_if_exists=True,
    )


def pin_study(study: optuna.Study, facts: dict[str, str]) -> None:
    """Record what a study searches (data version, space, metric); a sweep resumed under the
    same name on anything else is refused, since its trials' values would not compare."""
    for key, value in facts.items():
        pinned = study.user_attrs.get(f"skin.{key}")
        if pinned is not None and pinned != value:
            raise SpaceError(
                f"study {study.study_name!r} searched {key} {pinned!r}, not {value!r}: its trials"
                " would not compare; start a new study with --name"
            )
        study.set_user_attr(f"skin.{key}", value)


def _sampler(space: Space) -> optuna.samplers.BaseSampler:
    import optuna

    if space.sampler == "random":
        return optuna.samplers.RandomSampler(seed=space.seed)
    # constant_liar: trials running side by side are steered away from each other
    return optuna.samplers.TPESampler(seed=space.seed, constant_liar=True)


def _pruner(p: Pruning) -> optuna.pruners.BasePruner:
    import optuna

    if p.kind == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(
        n_startup_trials=p.n_startup_trials,
        n_warmup_steps=p.n_warmup_steps,
        interval_steps=p.interval_steps,
    )


def fail_stale(study: optuna.Study) -> None:
    """Fail (and queue again) the RUNNING trials whose process stopped beating."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def settle(study: optuna.Study, heartbeat: int) -> None:
    """Wait one grace period (2 × `heartbeat`) at most for the trials RUNNING when a sweep
    starts: alive elsewhere, they keep running; dead (a crash just before), they go stale and are
    failed and queued again. Counted as running instead, a sweep resumed right after a crash
    would end one trial short."""
    import optuna

    def running() -> set[int]:
        states = (optuna.trial.TrialState.RUNNING,)
        return {t._trial_id for t in study.get_trials(deepcopy=False, states=states)}

    fail_stale(study)
    waiting = running()
    if waiting:
        log.info("%d trial(s) running: waiting up to %d s for a dead one to go stale",
                 len(waiting), 2 * heartbeat)  # fmt: skip
    deadline = time.monotonic() + 2 * heartbeat + 1
    while waiting and time.monotonic() < deadline:
        time.sleep(min(1.0, heartbeat / 2))
        fail_stale(study)
        waiting &= running()


def trials_to_run(study: optuna.Study, total: int) -> int:
    """How many more trials reach `total`: finished ones count once (a stale trial and its
    retry are one), trials still running elsewhere count too."""
    trials = study.get_trials(deepcopy=False)
    finished = sum(t.state.name in FINISHED for t in trials)
    retries = sum("failed_trial" in t.system_attrs for t in trials)
    running = sum(t.state.name == "RUNNING" for t in trials)
    return max(0, total - (finished - retries) - running)


def ask(study: optuna.Study) -> optuna.trial.Trial:
    """A new trial (or a queued retry), without Optuna's warning that heartbeats belong to
    `optimize`: this sweep beats for its trials itself (`beating`)."""
    fail_stale(study)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return study.ask()


@dataclass(frozen=True)
class Asked:
    """A trial the sampler has filled in: what a trial task needs to run and report it."""

    number: int
    trial_id: int
    overrides: dict[str, Any]


def ask_trial(study: optuna.Study, space: Space) -> Asked:
    """One sampler, one process: the next trial's parameters, its first heartbeat recorded."""
    trial = ask(study)
    trial_id = trial._trial_id  # Optuna names no public id; a trial task reopens it by this
    study._storage.record_heartbeat(trial_id)
    overrides = suggest(trial, space)
    trial.set_user_attr("overrides", overrides)
    return Asked(trial.number, trial_id, overrides)


def reopen_trial(study: optuna.Study, asked: Asked) -> optuna.trial.Trial:
    """The asked trial, in another thread or process, to report epochs and ask the pruner."""
    import optuna

    return optuna.trial.Trial(study, asked.trial_id)


@contextmanager
def beating(study: optuna.Study, trial_id: int, interval: float) -> Iterator[None]:
    """Record the trial's heartbeat every `interval` s while the block runs."""
    storage = study._storage  # Optuna offers no public handle on a study's storage
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                storage.record_heartbeat(trial_id)
            except Exception as err:  # a locked database once must not silence the trial
                log.warning("heartbeat of trial %d not recorded: %s", trial_id, err)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """Every trial, best first: number, state, value, its parameters, its MLflow run."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                **{f"params.{k}": v for k, v in t.params.items()},
                "run_id": t.user_attrs.get("run_id"),
                "retry_of": t.system_attrs.get("failed_trial"),
            }
        )
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    ascending = study.direction.name == "MINIMIZE"
    return table.sort_values(["value", "number"], ascending=[ascending, True], na_position="last")


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The best complete trial, or None when no trial has completed."""
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    return study.best_trial if done else None


def history_png(study: optuna.Study, path: Path) -> None:
    """Each complete trial's value and the best so far, in trial order."""
    plt = pyplot()
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    numbers = [t.number for t in done]
    values = [float(t.value) for t in done]
    better = min if study.direction.name == "MINIMIZE" else max
    best = [better(values[: i + 1]) for i in range(len(values))]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.scatter(numbers, values, label="trial")
    ax.step(numbers, best, where="post", color="C1", label="best so far")
    pruned = [t.number for t in study.get_trials(deepcopy=False) if t.state.name == "PRUNED"]
    for n in pruned:
        ax.axvline(n, color="grey", ls=":", lw=0.8)
    ax.set_xlabel("trial (dotted: pruned)")
    ax.set_ylabel(study.user_attrs.get("metric", "value"))
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def importance_png(study: optuna.Study, path: Path) -> dict[str, float]:
    """Each parameter's share of the value's variation (fANOVA); {} when it cannot be told yet
    (fewer than two complete trials, or nothing varied)."""
    import optuna

    try:
        importances = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):
        return {}
    if not importances:
        return {}
    plt = pyplot()
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(7, 1.5 + 0.4 * len(names)))
    ax.barh(names, [importances[n] for n in names])
    ax.set_xlabel("importance (share of variation in the value)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return dict(importances)
