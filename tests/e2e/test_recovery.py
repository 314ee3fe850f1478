"""Crashes, outages and races through the real pipeline: nothing lost, runs resume, nothing leaks."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from skin.track.tracking import TrackingError
from skin.train import checkpoint as ckpt
from skin.train.loop import CRASH_AFTER_EPOCH
from tests import servers
from tests.helpers import tracking_db
from tests.recipes import TINY

pytestmark = [pytest.mark.slow, pytest.mark.server]
REPO = Path(__file__).resolve().parents[2]
SKIN = str(Path(sys.executable).parent / "skin")


def recipe(tmp_path: Path, tracking_uri: str, epochs: int) -> dict[str, object]:
    return {
        **TINY,
        "train.epochs": epochs,
        "work_dir": str(tmp_path / "work"),
        "tracking.tracking_uri": tracking_uri,
        "tracking.experiment": f"recovery-{uuid.uuid4().hex[:6]}",
    }


def config_file(tmp_path: Path, overrides: dict[str, object]) -> Path:
    """The dotted recipe as a YAML config for `skin run --config`."""
    nested: dict = {}
    for dotted, value in overrides.items():
        node = nested
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    path = tmp_path / f"cfg-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(nested))
    return path


def skin_run(
    cfg: Path, data: Path, home: Path, api: str, crash_after: int | None = None
) -> subprocess.Popen[str]:
    """`skin --json run` against the shared Prefect server, in its own process group.

    `crash_after=N` sets the SKIN_CRASH_AFTER_EPOCH test hook: the run SIGKILLs itself right
    after epoch N's checkpoint is written."""
    env = {k: v for k, v in os.environ.items() if k != CRASH_AFTER_EPOCH}
    if crash_after is not None:
        env[CRASH_AFTER_EPOCH] = str(crash_after)
    return subprocess.Popen(
        [SKIN, "--json", "run", "--data", str(data), "--config", str(cfg)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**env, "PREFECT_HOME": str(home), "PREFECT_API_URL": f"{api}/api"},
    )


def wait_for(base: Path, pattern: str, timeout: float = 300) -> Path:
    """Poll until a file matching `pattern` under `base` exists (e.g. an epoch checkpoint)."""
    deadline = time.monotonic() + timeout
    while True:
        hits = sorted(base.glob(pattern))
        if hits:
            return hits[0]
        assert time.monotonic() < deadline, f"{base}/{pattern} never appeared"
        time.sleep(0.05)


def test_tracking_server_down_at_start_fails_before_any_work(
    tmp_path: Path, sample_data: Path, prefect_api
) -> None:
    from flows.pipeline import pipeline_flow

    dead = f"http://127.0.0.1:{servers.free_port()}"
    with pytest.raises(TrackingError, match="unreachable"):
        pipeline_flow(data_uri=str(sample_data), overrides=recipe(tmp_path, dead, 2))
    assert not (tmp_path / "work").exists(), "nothing may be computed before the check"


def test_tracking_server_dies_mid_training_and_the_run_resumes_when_it_is_back(
    tmp_path: Path, sample_data: Path, prefect_api, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.pipeline import pipeline_flow

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    state = tmp_path / "mlflow"
    state.mkdir()
    server = servers.start_mlflow(state)
    port = int(server.url.rsplit(":", 1)[1])
    ov = recipe(tmp_path, server.url, 12)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            pipeline_flow(data_uri=str(sample_data), overrides=ov)
        except BaseException as err:  # the flow is expected to fail
            errors.append(err)

    worker = threading.Thread(target=run)
    worker.start()
    wait_for(tmp_path, "work/runs/*/checkpoints/epoch_0003.pt")
    server.stop()
    worker.join(timeout=300)
    assert errors, "training must fail once the tracking server is gone"
    ckpts = list((tmp_path / "work" / "runs").glob("*/checkpoints"))
    assert len(ckpts) == 1, ckpts
    kept = sorted(p.name for p in ckpt.listed(ckpts[0]))
    assert "epoch_0003.pt" in kept, f"checkpoints survive the outage: {kept}"

    server = servers.start_mlflow(state, port=port)
    try:
        result = pipeline_flow(data_uri=str(sample_data), overrides=ov)
        assert result["run_id"] == ckpts[0].parent.name, "the same MLflow run was resumed"
        client = MlflowClient(tracking_uri=server.url)
        run = client.get_run(result["run_id"])
        assert run.info.status == "FINISHED", run.info.status
        steps = {p.step for p in client.get_metric_history(run.info.run_id, "epoch/dev_accuracy")}
        assert steps == set(range(1, 13)), f"every epoch recorded once the server is back: {steps}"
    finally:
        server.stop()


def test_sigkill_of_the_whole_pipeline_resumes_from_the_last_checkpoint(
    tmp_path: Path, sample_data: Path, prefect_server
) -> None:
    epochs = 6  # killed after 3, resumed for 3 more: the resume is what is asked, not learning
    cfg = config_file(tmp_path, recipe(tmp_path, tracking_db(tmp_path), epochs))
    proc = skin_run(cfg, sample_data, tmp_path / "prefect-a", prefect_server.url, crash_after=3)
    _, err = proc.communicate(timeout=600)
    with contextlib.suppress(ProcessLookupError):  # whatever the kill left of the process group
        os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL, f"rc {proc.returncode}: {err[-3000:]}"
    run_dir = next((tmp_path / "work" / "runs").glob("*/checkpoints")).parent
    kept = [p.name for p in ckpt.listed(run_dir / "checkpoints")]
    assert kept[-1] == "epoch_0003.pt", f"killed right after epoch 3's checkpoint: {kept}"
    assert ckpt.load(run_dir / "checkpoints" / "last.pt")["epoch"] == 3
    assert not (run_dir / "train_outcome.json").exists(), "the training never finished"

    again = skin_run(cfg, sample_data, tmp_path / "prefect-b", prefect_server.url)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    result = json.loads(out)
    assert result["run_id"] == run_dir.name, "the killed run was resumed, not restarted"
    last = ckpt.load(run_dir / "checkpoints" / "last.pt")
    assert [h["epoch"] for h in last["history"]] == list(range(1, epochs + 1)), (
        "epochs before the kill kept"
    )
    outcome = json.loads((run_dir / "train_outcome.json").read_text())
    assert outcome["resumed_from"] == 3, outcome


def test_two_pipelines_at_once_on_one_dataset_corrupt_nothing(
    tmp_path: Path, sample_data: Path, prefect_server
) -> None:
    data = tmp_path / "data"
    shutil.copytree(sample_data, data)
    cfg = config_file(tmp_path, recipe(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}", 3))
    procs = [skin_run(cfg, data, tmp_path / f"prefect-{i}", prefect_server.url) for i in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out))
    assert results[0]["run_id"] == results[1]["run_id"], "one training, shared by both runs"
    assert results[0]["metrics"]["test_accuracy"] == results[1]["metrics"]["test_accuracy"]
    leftovers = [p for p in (tmp_path / "work").rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers, f"no half-written files: {leftovers}"


def test_credentials_never_reach_params_tags_artifacts_or_logs(
    s3_client, bucket: str, tmp_path: Path, mlflow_server, prefect_server
) -> None:
    """Run the pipeline on S3 with secrets in the environment, then grep everything it produced."""
    from skin.data.sample_data import write_sample_dataset

    data = f"s3://{bucket}/isic"
    write_sample_dataset(data, dict.fromkeys(["AK", "BCC", "NV", "MEL"], 8), size=32, seed=4)
    secret_key = f"SECRETKEY{uuid.uuid4().hex}"
    token = f"TOKEN{uuid.uuid4().hex}"
    key_id = os.environ["AWS_ACCESS_KEY_ID"]  # moto accepts any id; the secret is what matters
    cfg = config_file(tmp_path, recipe(tmp_path, mlflow_server.url, 2))
    home = tmp_path / "prefect"
    proc = subprocess.Popen(
        [SKIN, "--debug", "run", "--data", data, "--config", str(cfg)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={
            **os.environ,
            "PREFECT_HOME": str(home),
            "PREFECT_API_URL": f"{prefect_server.url}/api",
            "AWS_SECRET_ACCESS_KEY": secret_key,
            "AWS_ACCESS_KEY_ID": key_id,
            "MLFLOW_TRACKING_TOKEN": token,
        },
    )
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    run_id = next((tmp_path / "work" / "runs").glob("*/checkpoints")).parent.name

    client = MlflowClient(tracking_uri=mlflow_server.url)
    run = client.get_run(run_id)
    downloaded = Path(client.download_artifacts(run_id, "", str(tmp_path / "artifacts")))
    places: dict[str, bytes] = {"console": out.encode()}
    places["params+tags"] = json.dumps([run.data.params, run.data.tags]).encode()
    server_home = Path(prefect_server.log).parent / "prefect-home"  # its DB holds logs, params
    for root in (tmp_path / "work", home, server_home, downloaded):
        for f in root.rglob("*"):
            if f.is_file():
                places[str(f)] = f.read_bytes()
    assert len(places) > 20, "the scan must cover the run's files, the Prefect DB and the artifacts"
    for secret in (secret_key, token):
        leaks = [where for where, blob in places.items() if secret.encode() in blob]
        assert not leaks, f"a credential leaked into {leaks}"
