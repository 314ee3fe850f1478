"""prefect.yaml end to end: a real Prefect server, `prefect deploy --all`, a process worker, runs.

Deploys FROM the repository root (entrypoints resolve against the current folder) with
SKIN_PROJECT_DIR = the repository root, but every piece of state goes to tmp: Prefect's home and
database, the pipeline's work_dir, the MLflow database and its artifacts (passed as run parameters,
or as the pipeline deployment's defaults through a single-stage redeploy).

Steps over module fixtures, in order: the deployed stack (`stack`) → chaining switched on, a split
run with parameters starts train (`chained`) → a `skin.dataset.updated` event starts the pipeline
with data_uri from the event (`triggered`), whose cached stages say so → evaluate alone against
that run → the deployments' own recipe (hub weights) refused before any stage on a worker that
has no hub (HF_ENDPOINT on a closed port, an empty cache).
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import servers
from tests.helpers import tracking_db

pytestmark = [pytest.mark.slow, pytest.mark.server, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
PREFECT = str(servers.BIN / "prefect")
SKIN = str(servers.BIN / "skin")

RECIPE = {
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


STAGES = {
    "pipeline",
    "list",
    "audit",
    "split",
    "train",
    "evaluate",
    "prepare",
    "prepare-dask",
    "cv",
    "check-drift",
    "sweep",
}
EVENT_TRIGGER = "skin-pipeline on skin.dataset.updated"
CHAIN = "skin-train after split"


@dataclass
class Stack:
    """A Prefect server with every deployment and a worker; what each step needs to reach it."""

    client: Any  # a sync Prefect client on the server
    mlflow: Any  # an MlflowClient on the tracking database
    env: dict[str, str]
    data: Path
    work_dir: Path
    tracking_uri: str
    experiment: str
    artifacts: Path
    overrides: dict[str, Any]
    deployments: dict[str, Any]  # as deployed, before any step ran
    automations: dict[str, Any]  # as deployed, before any step ran
    logs: Callable[[], str]

    def runs_of(self, name: str) -> list[Any]:
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

        ids = DeploymentFilterId(any_=[self.deployments[name].id])
        return self.client.read_flow_runs(deployment_filter=DeploymentFilter(id=ids))


def _deploy(env: dict[str, str], overrides: dict[str, Any], logs: Callable[[], str]) -> None:
    """Create the pool, deploy everything, then redeploy the pipeline alone with tmp defaults."""
    _cli([PREFECT, "work-pool", "create", "local", "--type", "process"], env, logs)
    _cli([PREFECT, "--no-prompt", "deploy", "--all"], env, logs)
    # Redeploy a single stage with other defaults: event-triggered pipeline runs stay in tmp.
    params = json.dumps({"overrides": overrides})
    _cli([PREFECT, "--no-prompt", "deploy", "--name", "pipeline", "--params", params], env, logs)


def _prefect_env(tmp: Path) -> dict[str, str]:
    """This environment, with Prefect's home and database in `tmp` and no API or tracking URL."""
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp / 'prefect.db'}",
    }
    for key in ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILE", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    return env


def _serve(env: dict[str, str], log: Path) -> servers.Server:
    """`prefect server start` on a free loopback port with the Prefect settings in `env`."""
    port = servers.free_port()
    return servers.start(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        f"http://127.0.0.1:{port}",
        "/api/health",
        log,
        env={k: v for k, v in env.items() if k.startswith("PREFECT_")},
        timeout=120,
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Sample data, a Prefect server, `prefect deploy` from the repo, a process worker."""
    import mlflow
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    tmp = tmp_path_factory.mktemp("deployments")
    data, work_dir = tmp / "data", tmp / "work"
    tracking_uri = tracking_db(tmp)
    experiment = f"deployments-{uuid.uuid4().hex[:8]}"
    overrides = {**RECIPE, "work_dir": str(work_dir), "tracking.tracking_uri": tracking_uri,
                 "tracking.experiment": experiment}  # fmt: skip
    server_log, worker_log = tmp / "prefect-server.log", tmp / "prefect-worker.log"

    def logs() -> str:
        return f"{_tail(worker_log)}\n{_tail(server_log, 30)}"

    sample = subprocess.Popen(
        [SKIN, "sample-data", str(data), "--per-class", "12", "--size", "32"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base_env = _prefect_env(tmp)
    server = _serve(base_env, server_log)
    url = server.url
    try:
        env = {**base_env, "PREFECT_API_URL": f"{url}/api", "SKIN_PROJECT_DIR": str(REPO),
               "PREFECT_WORKER_QUERY_SECONDS": "2",
               # an offline worker, whatever this machine reaches: no hub, an empty hub cache
               "HF_ENDPOINT": f"http://127.0.0.1:{servers.free_port()}",
               "HF_HUB_CACHE": str(tmp / "hub"), "TORCH_HOME": str(tmp / "torch")}  # fmt: skip
        assert sample.wait(timeout=60) == 0, (
            f"skin sample-data failed:\n{sample.communicate()[0]!r}"
        )
        # MLflow artifacts of a sqlite store default to ./mlruns in the run's cwd (the repo):
        # create the experiment first, with its artifacts in tmp.
        mlflow_client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        artifacts = tmp / "mlartifacts"
        mlflow_client.create_experiment(experiment, artifact_location=artifacts.as_uri())
        _deploy(env, overrides, logs)
        with (
            temporary_settings(updates={PREFECT_API_URL: f"{url}/api"}),
            get_client(sync_client=True) as client,
            _worker(env, worker_log),
        ):
            yield Stack(
                client=client,
                mlflow=mlflow_client,
                env=env,
                data=data,
                work_dir=work_dir,
                tracking_uri=tracking_uri,
                experiment=experiment,
                artifacts=artifacts,
                overrides=overrides,
                deployments={d.name: d for d in client.read_deployments()},
                automations={a.name: a for a in client.read_automations()},
                logs=logs,
            )
    finally:
        server.stop()
        if sample.poll() is None:
            sample.kill()


# --------------------------------------------------------------------------- as deployed


def test_every_stage_is_deployed(stack: Stack) -> None:
    assert set(stack.deployments) == STAGES, f"deployed: {sorted(stack.deployments)}"


def test_prepare_dask_knows_its_scheduler(stack: Stack) -> None:
    dask_env = stack.deployments["prepare-dask"].job_variables.get("env", {})
    assert dask_env.get("SKIN_DASK_ADDRESS"), f"prepare-dask needs its scheduler: {dask_env}"


def test_every_deployment_runs_in_the_repo_on_the_local_pool(stack: Stack) -> None:
    for d in stack.deployments.values():
        assert d.pull_steps == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
        ], f"{d.name}: SKIN_PROJECT_DIR not resolved at deploy time: {d.pull_steps}"
        assert d.work_pool_name == "local", f"{d.name} on pool {d.work_pool_name}"


def test_a_single_stage_redeploy_sets_its_defaults_and_keeps_the_yaml_ones(stack: Stack) -> None:
    pipeline = stack.deployments["pipeline"]
    assert pipeline.parameters.get("overrides") == stack.overrides, (
        f"single-stage redeploy did not set the defaults: {pipeline.parameters}"
    )
    assert pipeline.parameters.get("config_path") == "configs/notebook.yaml", (
        f"yaml defaults lost on redeploy: {pipeline.parameters}"
    )


def test_the_pipeline_runs_one_at_a_time_on_a_paused_weekly_schedule(stack: Stack) -> None:
    pipeline = stack.deployments["pipeline"]
    limit = pipeline.global_concurrency_limit
    assert limit is not None and limit.limit == 1, f"pipeline concurrency: {limit}"
    assert [(s.schedule.cron, s.active) for s in pipeline.schedules] == [("0 3 * * 1", False)], (
        f"pipeline schedules: {pipeline.schedules}"
    )


def test_the_dataset_event_trigger_is_on_and_chaining_is_opt_in(stack: Stack) -> None:
    automations = stack.automations
    assert automations.get(EVENT_TRIGGER) is not None, f"automations: {sorted(automations)}"
    assert automations[EVENT_TRIGGER].enabled, "event trigger off"
    chain = automations.get(CHAIN)
    assert chain is not None and not chain.enabled, f"chaining must be opt-in: {chain}"


# --------------------------------------------------------------------------- chaining


@dataclass
class Chained:
    split: Any  # the split flow run
    train_runs: list[Any]  # the train runs it started
    train: Any  # the first of them, finished
    mlflow_runs: list[Any]  # in the experiment, after it

    @property
    def run_id(self) -> str:
        """The one MLflow run the later steps work on."""
        assert len(self.mlflow_runs) == 1, f"MLflow runs after train: {len(self.mlflow_runs)}"
        return str(self.mlflow_runs[0].info.run_id)


@pytest.fixture(scope="module")
def chained(stack: Stack) -> Chained:
    """Chaining switched on (the UI's toggle), then split run with parameters; off again after."""
    from prefect.deployments import run_deployment

    chain = stack.automations[CHAIN]
    stack.client.resume_automation(chain.id)
    try:
        split = run_deployment(
            "skin-split/split",
            parameters={"data_uri": str(stack.data), "overrides": stack.overrides},
            timeout=RUN_TIMEOUT,
            poll_interval=1,
        )
        _assert_completed(split, "skin-split/split", stack.logs)
        train_runs = _wait("the chained train run", lambda: stack.runs_of("train"), stack.logs)
        train = _final(stack.client, train_runs[0].id, stack.logs)
    finally:
        stack.client.pause_automation(chain.id)
    experiment_id = stack.mlflow.get_experiment_by_name(stack.experiment).experiment_id
    return Chained(split, train_runs, train, stack.mlflow.search_runs([experiment_id]))


def test_split_starts_one_train_run_with_its_parameters(stack: Stack, chained: Chained) -> None:
    runs = chained.train_runs
    assert len(runs) == 1, f"train runs: {[r.name for r in runs]}"
    assert runs[0].parameters.get("overrides") == stack.overrides, (
        f"chaining lost split's parameters: {runs[0].parameters}"
    )


def test_the_chained_train_completes_into_one_mlflow_run(stack: Stack, chained: Chained) -> None:
    _assert_completed(chained.train, "chained train", stack.logs)
    assert len(chained.mlflow_runs) == 1, f"MLflow runs after train: {len(chained.mlflow_runs)}"


# --------------------------------------------------------------------------- event trigger


@dataclass
class Triggered:
    runs: list[Any]  # pipeline runs started by the event
    final: Any  # the first of them, finished


@pytest.fixture(scope="module")
def triggered(stack: Stack, chained: Chained) -> Triggered:
    """A dataset update event; data_uri rides on the resource label."""
    resource = {"prefect.resource.id": f"skin.dataset.test-{uuid.uuid4().hex[:6]}",
                "skin.data_uri": str(stack.data)}  # fmt: skip
    assert chained.run_id  # the pipeline's stages are cached from the chained train
    _cli([PREFECT, "event", "emit", "skin.dataset.updated", "--resource", json.dumps(resource)],
         stack.env, stack.logs)  # fmt: skip
    runs = _wait("the event-triggered pipeline run", lambda: stack.runs_of("pipeline"), stack.logs)
    return Triggered(runs, _final(stack.client, runs[0].id, stack.logs))


def test_a_dataset_event_starts_one_pipeline_run_on_its_data(
    stack: Stack, triggered: Triggered
) -> None:
    runs = triggered.runs
    assert len(runs) == 1, f"pipeline runs: {[r.name for r in runs]}"
    assert runs[0].parameters.get("data_uri") == str(stack.data), (
        f"data_uri not taken from the event: {runs[0].parameters}"
    )


def test_the_triggered_pipeline_evaluates_the_trained_run(
    stack: Stack, chained: Chained, triggered: Triggered
) -> None:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    _assert_completed(triggered.final, "event-triggered skin-pipeline/pipeline", stack.logs)
    run = stack.mlflow.get_run(chained.run_id)
    assert "test_balanced_accuracy" in run.data.metrics, (
        f"pipeline logged no test_balanced_accuracy to {chained.run_id}: {sorted(run.data.metrics)}"
    )
    assert run.info.artifact_uri.startswith(stack.artifacts.as_uri()), run.info.artifact_uri
    summaries = stack.client.read_artifacts(
        artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["skin-run-summary"]))
    )
    assert any(a.flow_run_id == triggered.final.id for a in summaries), (
        f"no skin-run-summary artifact for the pipeline run: {summaries}"
    )


def _logs_of(stack: Stack, flow_run_id: Any) -> str:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    flt = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
    return "\n".join(r.message for r in stack.client.read_logs(log_filter=flt))


def _artifact(stack: Stack, key: str, flow_run_id: Any) -> str:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    found = stack.client.read_artifacts(
        artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
    )
    return "\n".join(str(a.data) for a in found if a.flow_run_id == flow_run_id)


# --------------------------------------------------------------------------- one stage alone


def test_evaluate_runs_alone_against_the_earlier_run(
    stack: Stack, chained: Chained, triggered: Triggered
) -> None:
    from prefect.deployments import run_deployment

    evaluate = run_deployment(
        "skin-evaluate/evaluate",
        parameters={
            "run_id": chained.run_id,
            "overrides": {
                "work_dir": str(stack.work_dir),
                "tracking.tracking_uri": stack.tracking_uri,
            },
        },
        timeout=RUN_TIMEOUT,
        poll_interval=1,
    )
    _assert_completed(evaluate, "skin-evaluate/evaluate", stack.logs)
    assert (stack.work_dir / "runs" / chained.run_id).is_dir(), f"no run folder in {stack.work_dir}"
    summary = _artifact(stack, "skin-evaluate-summary", evaluate.id)
    assert "evaluate: ran" in summary or (
        "evaluate: cached" in summary and "refresh=true" in summary
    ), f"the artifact says whether evaluate ran or came from the cache: {summary}"


def test_stages_from_the_cache_say_so_in_the_log_and_the_artifact(
    stack: Stack, triggered: Triggered
) -> None:
    run = triggered.final  # its data and train stages come from the chained split and train
    said = _wait("a cache note in the pipeline's log",
                 lambda: "came from the cache" in (t := _logs_of(stack, run.id)) and t,
                 stack.logs, timeout=30)  # fmt: skip
    assert "refresh=true" in said, said
    summary = _artifact(stack, "skin-run-summary", run.id)
    assert "From the cache (same inputs, config and code)" in summary, summary


def test_the_recipes_weights_are_checked_before_any_stage_on_an_offline_worker(
    stack: Stack, chained: Chained
) -> None:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.deployments import run_deployment

    # The deployments' own recipe (tf_mixnet_s with hub weights) on a worker without the hub.
    where = {"work_dir": str(stack.work_dir), "tracking.tracking_uri": stack.tracking_uri}
    trained = run_deployment("skin-train/train", timeout=RUN_TIMEOUT, poll_interval=1,
                             parameters={"data_uri": str(stack.data), "overrides": where})  # fmt: skip
    assert trained.state is not None and trained.state.is_failed(), trained.state
    assert "tf_mixnet_s with model.pretrained" in (trained.state.message or ""), trained.state
    ids = FlowRunFilter(id=FlowRunFilterId(any_=[trained.id]))
    assert stack.client.read_task_runs(flow_run_filter=ids) == [], "no stage ran before the check"
