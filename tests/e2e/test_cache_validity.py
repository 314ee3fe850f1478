"""A cached result is used only where what it names exists: the work folder, the tracking store.

Real `skin run` processes, each in its own folder with the default relative `.skin` and
`sqlite:///mlflow.db`, sharing one Prefect home (the result cache) and one Prefect server, as
users and workers on one machine do.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import tracking_db
from tests.recipes import TINY

pytestmark = [pytest.mark.slow, pytest.mark.server]
REPO = Path(__file__).resolve().parents[2]
SKIN = str(Path(sys.executable).parent / "skin")
MODEL_STAGES = ("prepare-images", "train", "evaluate", "register-model")


def skin_run(folder: Path, data: Path, home: Path, api: str, experiment: str) -> dict[str, Any]:
    """`skin --json run` in `folder` (its own `.skin` and `mlflow.db`), with the shared Prefect
    home and server; the parsed result, or the failure's output."""
    tracking_db(folder)  # the default store, fresh where there is none (migrated once)
    cfg = folder / "skin.yaml"
    recipe = {**TINY, "train.epochs": 1, "tracking.experiment": experiment}
    nested: dict[str, Any] = {}
    for dotted, value in recipe.items():
        *parents, leaf = dotted.split(".")
        node = nested
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    cfg.write_text(yaml.safe_dump(nested))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env |= {"PREFECT_HOME": str(home), "PREFECT_API_URL": f"{api}/api"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [SKIN, "--json", "run", "--data", str(data), "--config", str(cfg)],
        cwd=folder,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert done.returncode == 0, f"skin run in {folder} failed:\n{done.stderr[-4000:]}"
    result = json.loads(done.stdout)
    result["log"] = done.stderr
    return result


@pytest.fixture
def shared(tmp_path: Path, prefect_server) -> dict[str, Any]:
    """One Prefect home and server for every run of a test, and a fresh experiment name."""
    return {
        "home": tmp_path / "prefect-home",
        "api": prefect_server.url,
        "experiment": f"cache-{uuid.uuid4().hex[:6]}",
    }


def run_in(folder: Path, sample_data: Path, shared: dict[str, Any]) -> dict[str, Any]:
    return skin_run(folder, sample_data, shared["home"], shared["api"], shared["experiment"])


def test_a_second_folder_with_the_same_prefect_home_runs_its_own_stages(
    tmp_path: Path, sample_data: Path, shared: dict[str, Any]
) -> None:
    first = run_in(tmp_path / "a", sample_data, shared)
    second = run_in(tmp_path / "b", sample_data, shared)
    assert second["run_id"] != first["run_id"], "b's training names a run in a's mlflow.db"
    assert {s: second["stages"][s] for s in MODEL_STAGES} == dict.fromkeys(MODEL_STAGES, "ran")
    assert (tmp_path / "b" / ".skin" / "runs" / second["run_id"]).is_dir()
    report = tmp_path / "b" / second["report_dir"]  # relative to b (or absolute)
    assert (report / "metrics.json").is_file(), f"b evaluated into its own folder: {report}"


def test_a_worker_in_the_same_folder_reuses_what_is_still_there(
    tmp_path: Path, sample_data: Path, shared: dict[str, Any]
) -> None:
    first = run_in(tmp_path / "a", sample_data, shared)
    again = run_in(tmp_path / "a", sample_data, shared)
    assert again["run_id"] == first["run_id"]
    cached = ("split", "undersample", "prepare-images", "train", "evaluate", "register-model")
    assert {s: again["stages"][s] for s in cached} == dict.fromkeys(cached, "cached"), again
    assert "not reused" not in again["log"], "nothing was gone: nothing is said"


def test_a_deleted_work_folder_runs_again_and_says_why(
    tmp_path: Path, sample_data: Path, shared: dict[str, Any]
) -> None:
    folder = tmp_path / "a"
    run_in(folder, sample_data, shared)
    shutil.rmtree(folder / ".skin")
    again = run_in(folder, sample_data, shared)
    for stage in ("split", "undersample", "prepare-images", "train"):
        assert again["stages"][stage] == "ran", (stage, again["stages"])
    assert "not reused" in again["log"] and ".skin" in again["log"], again["log"][-3000:]


def test_a_deleted_tracking_store_runs_again_and_says_why(
    tmp_path: Path, sample_data: Path, shared: dict[str, Any]
) -> None:
    folder = tmp_path / "a"
    first = run_in(folder, sample_data, shared)
    (folder / "mlflow.db").unlink()
    again = run_in(folder, sample_data, shared)
    assert again["stages"]["train"] == "ran" and again["run_id"] != first["run_id"]
    assert again["registration"]["version"] == "1", "a fresh registry starts at v1"
    assert "not reused" in again["log"] and first["run_id"] in again["log"], again["log"][-3000:]
