"""prefect.yaml end to end: a real Prefect server, `prefect deploy --all`, a process worker, runs.

Deploys FROM the repository root (entrypoints resolve against the current folder) with
SKIN_PROJECT_DIR = the repository root, but every piece of state goes to tmp: Prefect's home and
database, the pipeline's work_dir, the MLflow database and its artifacts (passed as run parameters,
or as the pipeline deployment's defaults through a single-stage redeploy).

Covers: split run with parameters → opt-in chaining trigger starts train → `skin.dataset.updated`
event starts the pipeline with data_uri from the event → evaluate alone against that run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

from tests import servers

REPO = Path(__file__).resolve().parents[1]
PREFECT = str(servers.BIN / "prefect")
SKIN = str(servers.BIN / "skin")

TINY = {
    "model.name": "mobilenetv3_small_050",
    "model.pretrained": False,
    "model.freeze": "none",
    "train.epochs": 2,
    "train.batch_size": 32,
    "train.image_size": 32,
}
RUN_TIMEOUT = 240.0


def _tail(path: Path, n: int = 60) -> str:
    if not path.exists():
        return f"(no {path.name})"
    lines = path.read_text(errors="replace").splitlines()
    return f"--- {path.name} (last {n} lines) ---\n" + "\n".join(lines[-n:])


def _cli(
    args: list[str], env: dict[str, str], logs: Callable[[], str], timeout: float = 120
) -> str:
    """Run a CLI command from the repository root; fail with its output and the logs."""
    out = subprocess.run(
        args,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, f"{' '.join(args)} exited {out.returncode}:\n{text}\n{logs()}"
    return text


@contextmanager
def _worker(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`prefect worker start --pool local` in its own session; it ignores SIGTERM and one SIGINT."""
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [PREFECT, "worker", "start", "--pool", "local"],
            cwd=REPO,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield proc
        finally:
            for sig in (signal.SIGINT, signal.SIGINT):
                if proc.poll() is not None:
                    break
                os.killpg(proc.pid, sig)
                with suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def _wait(what: str, probe: Callable[[], Any], logs: Callable[[], str], timeout: float = 60) -> Any:
    """Poll `probe` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout}s waiting for {what}\n{logs()}")


def _final(client: Any, flow_run_id: Any, logs: Callable[[], str]) -> Any:
    """Wait for a flow run to reach a final state; returns the flow run."""

    def done() -> Any:
        run = client.read_flow_run(flow_run_id)
        return run if run.state is not None and run.state.is_final() else None

    return _wait(f"flow run {flow_run_id} to finish", done, logs, timeout=RUN_TIMEOUT)


def _assert_completed(run: Any, what: str, logs: Callable[[], str]) -> None:
    state = run.state
    assert state is not None and state.is_completed(), (
        f"{what} ({run.name}, {run.id}) ended {state.name if state else None}:"
        f" {state.message if state else ''}\n{logs()}"
    )


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.timeout(600)
def test_deployments_end_to_end(tmp_path: Path) -> None:
    import mlflow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        DeploymentFilter,
        DeploymentFilterId,
    )
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    started = time.monotonic()
    data = tmp_path / "data"
    work_dir = tmp_path / "work"
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = f"deployments-{uuid.uuid4().hex[:8]}"
    overrides = {
        **TINY,
        "work_dir": str(work_dir),
        "tracking.tracking_uri": tracking_uri,
        "tracking.experiment": experiment,
    }
    server_log, worker_log = tmp_path / "prefect-server.log", tmp_path / "prefect-worker.log"

    def logs() -> str:
        return f"{_tail(worker_log)}\n{_tail(server_log, 30)}"

    sample = subprocess.Popen(
        [SKIN, "sample-data", str(data), "--per-class", "12", "--size", "32"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )

    base_env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}",
    }
    for key in ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILE", "MLFLOW_TRACKING_URI"):
        base_env.pop(key, None)
    port = servers.free_port()
    url = f"http://127.0.0.1:{port}"
    server = servers.start(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        url,
        "/api/health",
        server_log,
        env={k: base_env[k] for k in base_env if k.startswith("PREFECT_")},
        timeout=120,
    )
    try:
        env = {
            **base_env,
            "PREFECT_API_URL": f"{url}/api",
            "SKIN_PROJECT_DIR": str(REPO),
            "PREFECT_WORKER_QUERY_SECONDS": "2",
        }
        assert sample.wait(timeout=60) == 0, (
            f"skin sample-data failed:\n{sample.communicate()[0]!r}"
        )

        # MLflow artifacts of a sqlite store default to ./mlruns in the run's cwd (the repo):
        # create the experiment first, with its artifacts in tmp.
        mlflow_client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        artifacts = tmp_path / "mlartifacts"
        mlflow_client.create_experiment(experiment, artifact_location=artifacts.as_uri())

        _cli([PREFECT, "work-pool", "create", "local", "--type", "process"], env, logs)
        _cli([PREFECT, "--no-prompt", "deploy", "--all"], env, logs)
        # Redeploy a single stage with other defaults: event-triggered pipeline runs stay in tmp.
        _cli(
            [
                PREFECT,
                "--no-prompt",
                "deploy",
                "--name",
                "pipeline",
                "--params",
                json.dumps({"overrides": overrides}),
            ],
            env,
            logs,
        )

        with (
            temporary_settings(updates={PREFECT_API_URL: f"{url}/api"}),
            get_client(sync_client=True) as client,
            _worker(env, worker_log),
        ):
            deployments = {d.name: d for d in client.read_deployments()}
            assert set(deployments) == {
                "pipeline",
                "list",
                "split",
                "train",
                "evaluate",
                "prepare",
                "prepare-dask",
            }, f"deployed: {sorted(deployments)}"
            dask_env = deployments["prepare-dask"].job_variables.get("env", {})
            assert dask_env.get("SKIN_DASK_ADDRESS"), (
                f"prepare-dask needs its scheduler: {dask_env}"
            )
            for d in deployments.values():
                assert d.pull_steps == [
                    {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
                ], f"{d.name}: SKIN_PROJECT_DIR not resolved at deploy time: {d.pull_steps}"
                assert d.work_pool_name == "local", f"{d.name} on pool {d.work_pool_name}"
            pipeline = deployments["pipeline"]
            assert pipeline.parameters.get("overrides") == overrides, (
                f"single-stage redeploy did not set the defaults: {pipeline.parameters}"
            )
            assert pipeline.parameters.get("config_path") == "configs/notebook.yaml", (
                f"yaml defaults lost on redeploy: {pipeline.parameters}"
            )
            limit = pipeline.global_concurrency_limit
            assert limit is not None and limit.limit == 1, f"pipeline concurrency: {limit}"
            assert [(s.schedule.cron, s.active) for s in pipeline.schedules] == [
                ("0 3 * * 1", False)
            ], f"pipeline schedules: {pipeline.schedules}"
            automations = {a.name: a for a in client.read_automations()}
            assert automations.get("skin-pipeline on skin.dataset.updated") is not None, (
                f"automations: {sorted(automations)}"
            )
            assert automations["skin-pipeline on skin.dataset.updated"].enabled, "event trigger off"
            chain = automations.get("skin-train after split")
            assert chain is not None and not chain.enabled, f"chaining must be opt-in: {chain}"

            # Opt in to chaining (the UI's toggle), then run split with parameters.
            client.resume_automation(chain.id)
            split = run_deployment(
                "skin-split/split",
                parameters={"data_uri": str(data), "overrides": overrides},
                timeout=RUN_TIMEOUT,
                poll_interval=1,
            )
            _assert_completed(split, "skin-split/split", logs)

            def runs_of(name: str) -> list[Any]:
                return client.read_flow_runs(
                    deployment_filter=DeploymentFilter(
                        id=DeploymentFilterId(any_=[deployments[name].id])
                    )
                )

            train_runs = _wait("the chained train run", lambda: runs_of("train"), logs)
            assert len(train_runs) == 1, f"train runs: {[r.name for r in train_runs]}"
            assert train_runs[0].parameters.get("overrides") == overrides, (
                f"chaining lost split's parameters: {train_runs[0].parameters}"
            )
            _assert_completed(_final(client, train_runs[0].id, logs), "chained train", logs)
            client.pause_automation(chain.id)

            mlflow_runs = mlflow_client.search_runs(
                [mlflow_client.get_experiment_by_name(experiment).experiment_id]
            )
            assert len(mlflow_runs) == 1, f"MLflow runs after train: {len(mlflow_runs)}"
            run_id = mlflow_runs[0].info.run_id

            # A dataset update event starts the pipeline, data_uri from the resource label.
            _cli(
                [
                    PREFECT,
                    "event",
                    "emit",
                    "skin.dataset.updated",
                    "--resource",
                    json.dumps(
                        {
                            "prefect.resource.id": f"skin.dataset.test-{uuid.uuid4().hex[:6]}",
                            "skin.data_uri": str(data),
                        }
                    ),
                ],
                env,
                logs,
            )
            pipeline_runs = _wait(
                "the event-triggered pipeline run", lambda: runs_of("pipeline"), logs
            )
            assert len(pipeline_runs) == 1, f"pipeline runs: {[r.name for r in pipeline_runs]}"
            assert pipeline_runs[0].parameters.get("data_uri") == str(data), (
                f"data_uri not taken from the event: {pipeline_runs[0].parameters}"
            )
            pipeline_run = _final(client, pipeline_runs[0].id, logs)
            _assert_completed(pipeline_run, "event-triggered skin-pipeline/pipeline", logs)

            run = mlflow_client.get_run(run_id)
            assert "test_balanced_accuracy" in run.data.metrics, (
                f"pipeline logged no test_balanced_accuracy to {run_id}: {sorted(run.data.metrics)}"
            )
            assert run.info.artifact_uri.startswith(artifacts.as_uri()), run.info.artifact_uri
            summaries = client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["skin-run-summary"]))
            )
            assert any(a.flow_run_id == pipeline_run.id for a in summaries), (
                f"no skin-run-summary artifact for the pipeline run: {summaries}"
            )

            # Run one stage alone against the earlier run's outputs.
            evaluate = run_deployment(
                "skin-evaluate/evaluate",
                parameters={
                    "run_id": run_id,
                    "overrides": {"work_dir": str(work_dir), "tracking.tracking_uri": tracking_uri},
                },
                timeout=RUN_TIMEOUT,
                poll_interval=1,
            )
            _assert_completed(evaluate, "skin-evaluate/evaluate", logs)
            assert (work_dir / "runs" / run_id).is_dir(), f"no run folder in {work_dir}"
    finally:
        server.stop()
        if sample.poll() is None:
            sample.kill()
    print(f"deployments end to end: {time.monotonic() - started:.0f}s")
