"""The one seam to experiment tracking: a Tracker protocol, a no-op one, and MLflow (imported lazily)."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import urllib.request
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
_SECRET_NAME = re.compile(r"(secret|password|token|key_id|access_key|credential)", re.I)


class TrackingError(RuntimeError):
    """The tracking server cannot be reached or refused a request; says which and how to fix."""


class Tracker(Protocol):
    """What the pipeline records: the library returns values, this seam writes them down."""

    run_id: str

    def log_params(self, params: dict[str, str]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def log_model(
        self, model: Any, input_example: Any, registered_name: str | None
    ) -> str | None: ...
    def url(self) -> str | None: ...
    def close(self, status: str = "FINISHED") -> None: ...


class NullTracker:
    """Records nothing (a GPU box without MLflow, unit tests); keeps metrics for inspection."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.metrics: dict[str, float] = {}
        self.params: dict[str, str] = {}
        self.tags: dict[str, str] = {}

    def log_params(self, params: dict[str, str]) -> None:
        self.params.update(params)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.update(metrics)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        return None

    def set_tags(self, tags: dict[str, str]) -> None:
        self.tags.update(tags)

    def log_model(self, model: Any, input_example: Any, registered_name: str | None) -> str | None:
        return None

    def url(self) -> str | None:
        return None

    def close(self, status: str = "FINISHED") -> None:
        return None


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


def _ensure_experiment(mlflow: Any, uri: str, name: str) -> None:
    """With a SQLite store, keep artifacts beside the database (MLflow's default, ./mlruns in
    whatever folder the process happens to run in, scatters them)."""
    if not uri.startswith("sqlite:///") or mlflow.get_experiment_by_name(name) is not None:
        return
    db = Path(uri.removeprefix("sqlite:///")).resolve()
    mlflow.create_experiment(name, artifact_location=(db.parent / "mlartifacts" / name).as_uri())


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

    def log_model(self, model: Any, input_example: Any, registered_name: str | None) -> str | None:
        import mlflow.pytorch

        info = mlflow.pytorch.log_model(
            model,
            name="model",
            input_example=input_example,
            registered_model_name=registered_name,
            pip_requirements=["torch", "timm"],
        )
        return info.model_uri

    def url(self) -> str | None:
        if not self.uri.startswith(("http://", "https://")):
            return None
        return f"{self.uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"

    def close(self, status: str = "FINISHED") -> None:
        if self._mlflow.active_run() is not None:
            self._mlflow.end_run(status=status)
