"""The one seam to MLflow (imported lazily): runs (Tracker, tracked_run), registry and model files.

Nothing else in `skin` talks to MLflow, and nothing here sets MLflow's global tracking URI except
the fluent run of an MLflowTracker (MLflow's `log_model` needs it). The registry and model
downloads go through an explicit client (`MLflowRegistry`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import urllib.request
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Protocol

from skin.track.refs import (
    AliasRef,
    LoggedModelRef,
    ModelRef,
    ModelRefError,
    RunRef,
    VersionRef,
    as_model_ref,
    parse_model_ref,
)

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
_SECRET_NAME = re.compile(r"(secret|password|token|key_id|access_key|credential)", re.I)
# The exact weights of a logged model live inside its own artifacts, named by these tags (copied
# onto a registry version when it is created): a version is immutable, whatever its run does later.
CHECKPOINT_ARTIFACT = "artifacts/checkpoint.pt"  # where pyfunc keeps it ("skin/…" before)
CHECKPOINT_TAG = "skin.train.checkpoint"
CHECKPOINT_SHA_TAG = "skin.checkpoint_sha256"
MODEL_ID_TAG = "skin.model_id"  # on a version: the logged model it was made from
BEST_EPOCH = "best_epoch"
ENSEMBLE_MODEL_TAG = "skin.ensemble_model"  # on an ensemble's run: the logged model it serves
_MODEL_VERSIONS = "mlflow.modelVersions"


PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: the UI nests a run under this parent


class TrackingError(RuntimeError):
    """The tracking server cannot be reached, refused a request, or holds no usable record."""


class MissingRecordError(TrackingError):
    """A run, metric or model that a record points at is not there (deleted, garbage-collected)."""


class Tracker(Protocol):
    """What the pipeline records: the library returns values, this seam writes them down.

    An explicit subclass inherits these bodies, which record nothing and return None."""

    run_id: str

    def log_params(self, params: dict[str, str]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def log_pyfunc(
        self,
        python_model: Any,
        artifacts: dict[str, str],
        tags: dict[str, str],
        signature: Any,
        example: Any,
        registered_name: str | None = None,
    ) -> str | None: ...
    def fetch_report(self, names: Sequence[str], dst: Path) -> None: ...
    def log_dataset(self, frame: Any, name: str, digest: str, context: str) -> None: ...
    def set_description(self, text: str) -> None: ...
    def url(self) -> str | None: ...
    def close(self, status: str = "FINISHED") -> None: ...


class NullTracker(Tracker):
    """Records nothing (a GPU box without MLflow, unit tests); keeps metrics, params and tags for
    inspection. Artifacts and models are dropped, there is no URL, and closing does nothing."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.metrics: dict[str, float] = {}
        self.params: dict[str, str] = {}
        self.tags: dict[str, str] = {}
        self.datasets: list[tuple[str, str, str, int]] = []

    def log_params(self, params: dict[str, str]) -> None:
        self.params.update(params)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.update(metrics)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.tags.update(tags)

    def log_dataset(self, frame: Any, name: str, digest: str, context: str) -> None:
        self.datasets.append((name, digest, context, len(frame)))

    def set_description(self, text: str) -> None:
        self.tags["mlflow.note.content"] = text


def resolve_tracking_uri(configured: str | None) -> str:
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail before any work when an HTTP tracking server is down (not after hours of training)."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:
            if resp.status == 200:
                return
            raise TrackingError(f"MLflow server at {uri} answered {resp.status} on /health")
    except OSError as err:
        raise TrackingError(
            f"MLflow server at {uri} is unreachable ({err}); start it, or point MLFLOW_TRACKING_URI"
            " (or tracking.tracking_uri) at a running server or a sqlite:///file.db"
        ) from err


def scrub(params: dict[str, str]) -> dict[str, str]:
    """Drop anything that looks like a credential: secrets never become params or tags."""
    return {k: v for k, v in params.items() if not _SECRET_NAME.search(k)}


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


@cache
def sqlite_ready(uri: str) -> None:
    """Create (or migrate) a SQLite store under a file lock, once per process: two processes
    opening a fresh database at once race in MLflow's migrations ('table … already exists')."""
    if not uri.startswith("sqlite:///"):
        return
    from filelock import FileLock
    from mlflow import MlflowClient

    db = Path(uri.removeprefix("sqlite:///")).resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(db) + ".lock"):
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)


def _ensure_experiment(mlflow: Any, uri: str, name: str) -> None:
    """With a SQLite store, keep artifacts beside the database (MLflow's default, ./mlruns in
    whatever folder the process happens to run in, scatters them)."""
    if not uri.startswith("sqlite:///") or mlflow.get_experiment_by_name(name) is not None:
        return
    db = Path(uri.removeprefix("sqlite:///")).resolve()
    mlflow.create_experiment(name, artifact_location=(db.parent / "mlartifacts" / name).as_uri())


# MLflow's warnings on a dataset input that say nothing about ours: a local path matches two equal
# source classes (it picks one), and a model-schema hint on integer columns (never a model input).
DATASET_NOISE = (
    "The specified dataset source can be interpreted in multiple ways",
    "Hint: Inferred schema contains integer column",
)


class MLflowTracker:
    """One MLflow run, opened (or re-opened, to resume) on creation, ended by close()."""

    def __init__(
        self,
        tracking_uri: str | None,
        experiment: str,
        run_id: str | None = None,
        run_name: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        import mlflow

        self.uri = resolve_tracking_uri(tracking_uri)
        check_reachable(self.uri)
        sqlite_ready(self.uri)
        mlflow.set_tracking_uri(self.uri)
        self._mlflow = mlflow
        try:
            _ensure_experiment(mlflow, self.uri, experiment)
            exp = mlflow.set_experiment(experiment)
            if run_id is None:
                run = mlflow.start_run(run_name=run_name, tags=tags)
            else:
                run = mlflow.start_run(run_id=run_id)
        except Exception as err:
            raise TrackingError(f"cannot open an MLflow run at {self.uri}: {err}") from err
        self.experiment_id = exp.experiment_id
        self.run_id = run.info.run_id

    def log_params(self, params: dict[str, str]) -> None:
        clean = {k: v if len(v) <= 500 else v[:497] + "..." for k, v in scrub(params).items()}
        existing = self._mlflow.get_run(self.run_id).data.params
        fresh = {k: v for k, v in clean.items() if k not in existing}
        if fresh:  # params are immutable in MLflow: a resumed run logs only new ones
            self._mlflow.log_params(fresh)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._mlflow.log_metrics(metrics, step=step)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if Path(path).is_dir():
            self._mlflow.log_artifacts(str(path), artifact_path)
        else:
            self._mlflow.log_artifact(str(path), artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        self._mlflow.set_tags(scrub(tags))

    def log_pyfunc(
        self,
        python_model: Any,
        artifacts: dict[str, str],
        tags: dict[str, str],
        signature: Any,
        example: Any,
        registered_name: str | None = None,
    ) -> str:
        """Log a pyfunc model (name "model"; `python_model` a PythonModel or the path of a
        models-from-code file) with its artifacts, tags, signature and input example. What the
        model is belongs to `skin.serve.pyfunc`, which calls this: the seam knows MLflow, not the
        model."""
        import mlflow.pyfunc

        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=python_model,
            artifacts=artifacts,
            signature=signature,
            input_example=example,
            registered_model_name=registered_name,
            pip_requirements=_serving_requirements(),
            tags=tags,
        )
        return info.model_uri

    def fetch_report(self, names: Sequence[str], dst: Path) -> None:
        """Download this run's report/<name>.json files that exist into `dst`."""
        client = self._mlflow.MlflowClient(tracking_uri=self.uri)
        logged = {Path(a.path).name for a in client.list_artifacts(self.run_id, "report")}
        for name in names:
            if f"{name}.json" in logged:
                client.download_artifacts(self.run_id, f"report/{name}.json", str(dst))

    def log_dataset(self, frame: Any, name: str, digest: str, context: str) -> None:
        """The data version as an MLflow dataset input (the UI's Datasets column): `name` is the
        data URI, `digest` the manifest hash, `context` train/dev/test."""
        import mlflow.data

        with warnings.catch_warnings():
            for text in DATASET_NOISE:
                warnings.filterwarnings("ignore", message=re.escape(text))
            dataset = mlflow.data.from_pandas(frame, source=name, name=name, digest=digest)
            self._mlflow.log_input(dataset, context=context)

    def set_description(self, text: str) -> None:
        """The run's description in the UI (MLflow's `mlflow.note.content` tag)."""
        self._mlflow.set_tag("mlflow.note.content", text)

    def url(self) -> str | None:
        if not self.uri.startswith(("http://", "https://")):
            return None
        return f"{self.uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"

    def close(self, status: str = "FINISHED") -> None:
        if self._mlflow.active_run() is not None:
            self._mlflow.end_run(status=status)


@contextmanager
def tracked_run(tracker: Tracker) -> Iterator[Tracker]:
    """Close the run FINISHED on success, FAILED on any error (or the error's `run_status`,
    KILLED for a pruned training); the error is re-raised, never masked by a tracking server
    that is itself gone (that only warns)."""
    try:
        yield tracker
    except BaseException as failure:
        status = getattr(failure, "run_status", "FAILED")  # KILLED: stopped on purpose (pruned)
        try:
            tracker.close(status)
        except Exception as err:
            log.warning("could not mark run %s %s: %s", tracker.run_id, status, err)
        raise
    tracker.close("FINISHED")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- registry and models


@dataclass(frozen=True)
class VersionRecord:
    """One registry version, as the gate needs it."""

    name: str
    version: str
    run_id: str | None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LocalCheckpoint:
    """A model reference resolved to a downloaded checkpoint file."""

    path: Path
    resolved: str  # models:/NAME/VERSION, models:/m-ID or runs:/RUN_ID/model
    artifact: str  # the artifact that was downloaded
    run_id: str | None
    version: str | None
    sha256: str | None  # verified; None for a run's (mutable) best epoch


def _code(err: Exception) -> str | None:
    return getattr(err, "error_code", None)


class MLflowRegistry:
    """The model registry and model artifacts through an explicit client (no global state)."""

    def __init__(self, tracking_uri: str | None = None) -> None:
        from mlflow import MlflowClient

        self.uri = resolve_tracking_uri(tracking_uri)
        sqlite_ready(self.uri)
        self.client = MlflowClient(tracking_uri=self.uri)

    def metric(self, run_id: str | None, metric: str) -> float:
        """A run's latest value of `metric`; MissingRecordError when the run or the metric is gone."""
        from mlflow.exceptions import MlflowException

        if not run_id:
            raise MissingRecordError(f"it has no source run, so no {metric}")
        try:
            metrics = self.client.get_run(run_id).data.metrics
        except MlflowException as err:
            if _code(err) != "RESOURCE_DOES_NOT_EXIST":
                raise
            raise MissingRecordError(
                f"its run {run_id} is gone (deleted and collected): {err}"
            ) from err
        if metric not in metrics:
            raise MissingRecordError(f"its run {run_id} has no {metric} metric")
        return float(metrics[metric])

    def by_alias(self, name: str, alias: str) -> VersionRecord | None:
        """The version `name@alias`, or None when the model or the alias does not exist."""
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version_by_alias(name, alias)
        except MlflowException as err:
            if _code(err) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise
        return VersionRecord(name, str(mv.version), mv.run_id or None, dict(mv.tags))

    def create_version(self, name: str, model_uri: str, run_id: str, description: str) -> str:
        """A new version of `name` (created if new); it records the logged model's checkpoint."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(name, description=description)
        except MlflowException as err:
            if _code(err) not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
        source, tags = model_uri, {"run_id": run_id}
        if model_id := logged_model_id(model_uri):
            logged = self.client.get_logged_model(model_id)
            pinned = {
                k: logged.tags[k] for k in (CHECKPOINT_TAG, CHECKPOINT_SHA_TAG) if k in logged.tags
            }
            tags |= {MODEL_ID_TAG: model_id, **pinned}
            if not self.uri.startswith(("http://", "https://")):
                # An in-process store resolves a models:/ source through MLflow's *global*
                # tracking URI (a TODO in its SqlAlchemyStore): give it the location itself.
                source = logged.artifact_location
        mv = self.client.create_model_version(
            name, source=source, run_id=run_id, tags=tags, model_id=model_id
        )
        if model_id:  # as mlflow.register_model does: the model's page lists its versions
            links = json.loads(logged.tags.get(_MODEL_VERSIONS, "[]"))
            links.append({"name": name, "version": str(mv.version)})
            self.client.set_logged_model_tags(model_id, {_MODEL_VERSIONS: json.dumps(links)})
        return str(mv.version)

    def run_gone(self, run_id: str) -> str | None:
        """Why run `run_id` cannot be reopened from this store (absent, or deleted), else None."""
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException as err:
            if _code(err) != "RESOURCE_DOES_NOT_EXIST":
                raise
            return f"MLflow run {run_id} is not in {self.uri}"
        if run.info.lifecycle_stage == "deleted":
            return f"MLflow run {run_id} was deleted from {self.uri}"
        return None

    def version_gone(self, name: str, version: str) -> str | None:
        """Why version `version` of `name` is not in this registry, else None."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_model_version(name, version)
        except MlflowException as err:
            if _code(err) not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise
            return f"model version {name} v{version} is not in {self.uri}"
        return None

    def checkpoint_sha(self, model_uri: str) -> str | None:
        """The sha256 of the checkpoint a logged model (`models:/m-ID`) carries; None when it
        records none or the URI names no logged model."""
        model_id = logged_model_id(model_uri)
        if model_id is None:
            return None
        return self.client.get_logged_model(model_id).tags.get(CHECKPOINT_SHA_TAG)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(name, alias, version)

    def set_version_tags(self, name: str, version: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(name, version, key, value)

    def describe_version(self, name: str, version: str, text: str) -> None:
        """The version's description: what the registry page shows (its model card)."""
        self.client.update_model_version(name, version, description=text)

    def create_run(self, experiment: str, run_name: str, tags: dict[str, str]) -> str:
        """A new run, made through the client (any thread, whatever run is active there)."""
        import mlflow

        mlflow.set_tracking_uri(self.uri)
        _ensure_experiment(mlflow, self.uri, experiment)
        found = self.client.get_experiment_by_name(experiment)
        exp_id = found.experiment_id if found else self.client.create_experiment(experiment)
        return self.client.create_run(exp_id, run_name=run_name, tags=scrub(tags)).info.run_id

    def record(
        self,
        run_id: str,
        *,
        metrics: dict[str, float] | None = None,
        tags: dict[str, str] | None = None,
        files: dict[str, Path] | None = None,
    ) -> None:
        """Metrics, tags and files (artifact folder → local path) into a run, without opening it."""
        for key, value in (metrics or {}).items():
            self.client.log_metric(run_id, key, float(value))
        for key, value in scrub(tags or {}).items():
            self.client.set_tag(run_id, key, value)
        for folder, path in (files or {}).items():
            log = self.client.log_artifacts if Path(path).is_dir() else self.client.log_artifact
            log(run_id, str(path), folder or None)

    def run_tags(self, run_id: str) -> dict[str, str]:
        return dict(self.client.get_run(run_id).data.tags)

    def download(self, run_id: str, artifact: str, dst: Path) -> Path:
        """One artifact of a run, downloaded under `dst`."""
        return Path(self.client.download_artifacts(run_id, artifact, str(dst)))

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        """A text artifact (e.g. `promotion.md`) in a run, without reopening the run."""
        self.client.log_text(run_id, text, artifact_file)

    def source_run(self, ref: ModelRef | str) -> str:
        """The training run behind `models:/NAME@ALIAS`, `models:/NAME/VERSION` or `runs:/ID/…`."""
        from mlflow.exceptions import MlflowException

        ref = as_model_ref(ref)
        try:
            match ref:
                case RunRef():
                    run_id = ref.run_id
                case AliasRef():
                    run_id = self.client.get_model_version_by_alias(ref.name, ref.alias).run_id
                case VersionRef():
                    run_id = self.client.get_model_version(ref.name, ref.version).run_id
                case _:
                    raise TrackingError(
                        f"{ref!s}: expected models:/NAME@ALIAS or models:/NAME/VERSION"
                    )
        except MlflowException as err:
            raise TrackingError(f"cannot resolve {ref} at {self.uri}: {err}") from err
        if not run_id:
            raise TrackingError(f"{ref} has no source run")
        return run_id

    def run_manifest(self, run_id: str, dst: Path) -> str:
        """The manifest a training run trained on: its logged copy (manifest/manifest.parquet),
        else the `manifest_uri` it tagged."""
        from mlflow.exceptions import MlflowException

        try:
            logged = {Path(a.path).name for a in self.client.list_artifacts(run_id, "manifest")}
            if "manifest.parquet" in logged:
                return self.client.download_artifacts(run_id, "manifest/manifest.parquet", str(dst))
            uri = self.client.get_run(run_id).data.tags.get("manifest_uri")
        except MlflowException as err:
            raise TrackingError(f"cannot read run {run_id} at {self.uri}: {err}") from err
        if not uri:
            raise MissingRecordError(f"run {run_id} recorded no manifest (not a training run?)")
        return uri

    def ensemble_members(self, run_id: str, dst: Path) -> list[str] | None:
        """The members (the references they were loaded from) of the ensemble a run logged, read
        from its model's members.json; None when the run logged no ensemble."""
        import mlflow.artifacts
        from mlflow.exceptions import MlflowException

        try:
            model_id = self.client.get_run(run_id).data.tags.get(ENSEMBLE_MODEL_TAG)
            if not model_id:
                return None
            logged = self.client.get_logged_model(model_id)
            artifact = logged.tags.get(CHECKPOINT_TAG, "artifacts/members.json")
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{logged.artifact_location.rstrip('/')}/{artifact}",
                dst_path=str(dst),
                tracking_uri=self.uri,
            )
        except MlflowException as err:
            raise TrackingError(f"cannot read the ensemble of run {run_id}: {err}") from err
        try:
            return [m["origin"] for m in json.loads(Path(local).read_text())["members"]]
        except (ValueError, KeyError, TypeError) as err:
            raise TrackingError(f"run {run_id}: {artifact} lists no members: {err}") from err

    def checkpoint(self, ref: ModelRef | str, dst: Path) -> LocalCheckpoint:
        """Download the weights `ref` names: a registered version's or logged model's own
        (sha256-checked); a run's current best epoch for runs:/RUN_ID/model."""
        from mlflow.exceptions import MlflowException

        ref = as_model_ref(ref)
        try:
            return self._checkpoint(ref, dst)
        except MlflowException as err:
            raise TrackingError(f"cannot load {ref} from MLflow at {self.uri}: {err}") from err

    def _checkpoint(self, ref: ModelRef, dst: Path) -> LocalCheckpoint:
        match ref:
            case RunRef(run_id=run_id):
                ensemble = self.client.get_run(run_id).data.tags.get(ENSEMBLE_MODEL_TAG)
                if ensemble:  # an ensemble's run has no checkpoints of its own: serve its model
                    logged = self.client.get_logged_model(ensemble)
                    return self._of_model(ensemble, logged.tags, ref.uri, None, run_id, dst)
                return self._best_epoch(run_id, RunRef(run_id).uri, None, dst)
            case LoggedModelRef(model_id=model_id):
                logged = self.client.get_logged_model(model_id)
                return self._of_model(
                    model_id, logged.tags, str(ref), None, logged.source_run_id, dst
                )
            case AliasRef():
                mv = self.client.get_model_version_by_alias(ref.name, ref.alias)
            case VersionRef():
                mv = self.client.get_model_version(ref.name, ref.version)
            case _:
                raise TrackingError(f"{ref}: not an MLflow model (runs:/ or models:/)")
        version = str(mv.version)
        resolved = str(VersionRef(mv.name, version))
        model_id = mv.model_id or mv.tags.get(MODEL_ID_TAG) or logged_model_id(mv.source)
        return self._of_model(model_id, mv.tags, resolved, version, mv.run_id or None, dst)

    def _of_model(
        self,
        model_id: str | None,
        tags: dict[str, str],
        resolved: str,
        version: str | None,
        run_id: str | None,
        dst: Path,
    ) -> LocalCheckpoint:
        if model_id and CHECKPOINT_SHA_TAG in tags:
            local, artifact, digest = self._pinned(model_id, tags, resolved, dst)
            pinned = f"models:/{model_id}/{artifact}"
            return LocalCheckpoint(local, resolved, pinned, run_id, version, digest)
        log.warning(
            "%s records no checkpoint (logged before skin kept one with each model): loading"
            " its run's current best epoch, which a later evaluation may have changed;"
            " register a fresh evaluation to pin its weights",
            resolved,
        )
        if not run_id:
            run_id = self.client.get_logged_model(model_id).source_run_id if model_id else None
        if not run_id:
            raise TrackingError(f"{resolved} has no source run and records no checkpoint")
        return self._best_epoch(run_id, resolved, version, dst)

    def _pinned(
        self, model_id: str, tags: dict[str, str], resolved: str, dst: Path
    ) -> tuple[Path, str, str]:
        """The checkpoint logged inside a model, checked against its recorded sha256: (the file,
        its artifact path, its sha256). Its folder comes along: the calibration logged beside it."""
        import mlflow.artifacts

        artifact = tags.get(CHECKPOINT_TAG, CHECKPOINT_ARTIFACT)
        folder, name = artifact.rsplit("/", 1) if "/" in artifact else ("", artifact)
        location = self.client.get_logged_model(model_id).artifact_location.rstrip("/")
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"{location}/{folder}".rstrip("/"),
                dst_path=str(dst),
                tracking_uri=self.uri,
            )
        )
        local = local / name
        digest, expected = sha256_file(local), tags[CHECKPOINT_SHA_TAG]
        if digest != expected:
            raise TrackingError(
                f"{resolved}: {artifact} of model {model_id} has sha256 {digest}, not the"
                f" {expected} recorded with it; its weights were changed, refusing to load them"
            )
        return local, artifact, digest

    def _best_epoch(
        self, run_id: str, resolved: str, version: str | None, dst: Path
    ) -> LocalCheckpoint:
        epoch = self.client.get_run(run_id).data.metrics.get(BEST_EPOCH)
        if epoch is None:
            raise TrackingError(
                f"{resolved}: run {run_id} has no {BEST_EPOCH} metric (not skin's?)"
            )
        artifact = f"checkpoints/epoch_{int(epoch):04d}.pt"
        local = self.client.download_artifacts(run_id, artifact, str(dst))
        report = {Path(a.path).name for a in self.client.list_artifacts(run_id, "report")}
        for name in ("calibration.json", "abstention.json"):  # to dst/report/: the predictor looks
            if name in report:
                self.client.download_artifacts(run_id, f"report/{name}", str(dst))
        return LocalCheckpoint(
            Path(local), resolved, f"runs:/{run_id}/{artifact}", run_id, version, None
        )


def _serving_requirements() -> list[str]:
    """What the served model imports, pinned to this environment (skin itself must be installed
    where it is served: `--env-manager local` or the project's image)."""
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("torch", "torchvision", "timm", "pillow", "pandas")]


def logged_model_id(uri: str | None) -> str | None:
    """The logged-model id of `models:/m-ID`, else None (any other reference, or none)."""
    try:
        ref = parse_model_ref(uri)  # type: ignore[arg-type]  (None: not a reference)
    except ModelRefError:
        return None
    return ref.model_id if isinstance(ref, LoggedModelRef) else None
