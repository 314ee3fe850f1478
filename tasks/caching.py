"""Cache keys from content hashes, config entries and the code a stage can reach by imports; a
cached result is reused only while what it names exists; retries for I/O faults only."""

from __future__ import annotations

import ast
import errno
import hashlib
import inspect
import logging
import textwrap
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

from prefect.cache_policies import TASK_SOURCE, CacheKeyFnPolicy, CachePolicy, CompoundCachePolicy
from prefect.context import TaskRunContext
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger

from skin.base.config import PipelineConfig, config_digest, digest
from skin.data.storage import exists_uri
from skin.track.tracking import MLflowRegistry, resolve_tracking_uri

log = logging.getLogger(__name__)

# Packages whose code can change a stage's result; everything else is a pinned dependency.
PROJECT = ("skin", "tasks", "flows")
ROOT = Path(__file__).resolve().parents[1]
# Same-module globals whose value (not code) a task reads: their repr joins its code key.
_PLAIN = (str, int, float, bool, tuple, list, dict, type(None))  # no sets: their order varies


def module_path(name: str, root: Path = ROOT) -> Path | None:
    """The file of project module `name` under `root` (a module or a package), else None."""
    if name.split(".")[0] not in PROJECT:
        return None
    base = root.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def read_source(path: Path) -> bytes:
    """One module's bytes (the one file read behind every code key)."""
    return path.read_bytes()


def _imported(node: ast.AST, package: str) -> list[str]:
    """Candidate module names one import statement may load (parents included)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: drop one package level per dot after the first
            parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            base = ".".join([*parts, *([base] if base else [])])
        names = [base, *(f"{base}.{a.name}" for a in node.names)]
    else:
        return []
    return [".".join(n.split(".")[: i + 1]) for n in names if n for i in range(n.count(".") + 1)]


@cache
def imports_of(name: str, root: Path = ROOT) -> frozenset[str]:
    """The project modules module `name` imports anywhere in its file (functions included):
    relative imports resolved, `from pkg import sub` counted when `sub` is a module."""
    path = module_path(name, root)
    if path is None:
        return frozenset()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(read_source(path), filename=str(path))
    found = {m for node in ast.walk(tree) for m in _imported(node, package)}
    return frozenset(m for m in found if m != name and module_path(m, root) is not None)


@cache
def module_closure(roots: tuple[str, ...], root: Path = ROOT) -> frozenset[str]:
    """Every project module reachable from `roots` by imports (the roots and packages included)."""
    seen: set[str] = set()
    todo = [".".join(r.split(".")[: i + 1]) for r in roots for i in range(r.count(".") + 1)]
    while todo:
        name = todo.pop()
        if name in seen or module_path(name, root) is None:
            continue
        seen.add(name)
        todo.extend(imports_of(name, root))
    return frozenset(seen)


def _is_project(module: str | None) -> bool:
    return bool(module) and str(module).split(".")[0] in PROJECT


def _plain(value: Any) -> bool:
    """A constant whose repr is stable across processes (no object addresses in it)."""
    if isinstance(value, dict):
        return all(_plain(k) and _plain(v) for k, v in value.items())
    if isinstance(value, (tuple, list)):
        return all(_plain(v) for v in value)
    return isinstance(value, _PLAIN)


def _global_refs(fn: Callable[..., Any]) -> tuple[list[Any], str]:
    """The module globals a function's source (decorators included) names, and that source."""
    text = textwrap.dedent(inspect.getsource(fn))
    names = sorted({n.id for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Name)})
    return [(n, fn.__globals__[n]) for n in names if n in fn.__globals__], text


@cache
def function_reach(fn: Callable[..., Any]) -> tuple[frozenset[str], tuple[str, ...]]:
    """(the project modules a task-side function uses, the text of the same-module helpers and
    constants it reads): a task's helpers count one by one, not its whole module's imports."""
    modules: set[str] = set()
    texts: list[str] = []
    seen: set[Any] = set()
    todo = [fn]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        refs, text = _global_refs(f)
        texts.append(text)
        for name, obj in refs:
            todo += _follow(f, name, obj, modules, texts)
    return frozenset(modules), tuple(texts)


def _follow(
    fn: Callable[..., Any], name: str, obj: Any, modules: set[str], texts: list[str]
) -> list[Callable[..., Any]]:
    """Sort one global a function names: a module or foreign code (its module's closure counts),
    a helper of the same module (followed), or a plain constant (its value counts)."""
    if isinstance(obj, ModuleType):
        modules.update([obj.__name__] if _is_project(obj.__name__) else [])
        return []
    target = getattr(obj, "fn", obj)  # a Prefect task or flow: the function it wraps
    if not (inspect.isfunction(target) or inspect.isclass(target)):
        texts.extend([f"{name}={obj!r}"] if _plain(obj) else [])
        return []
    owner = target.__module__
    if owner == fn.__module__:
        if inspect.isfunction(target):
            return [target]
        texts.append(inspect.getsource(target))
    elif _is_project(owner):
        modules.add(owner)
    return []


def _roots(entry: Any, root: Path = ROOT) -> tuple[frozenset[str], tuple[str, ...]]:
    """Where one declared entry point starts: a module (name or object), a library function or
    class (its module), or a task-side function (followed helper by helper)."""
    if isinstance(entry, str):
        if module_path(entry, root) is None:
            raise ValueError(f"cache key names unknown module {entry!r}: not a file under {root}")
        return frozenset([entry]), ()
    if isinstance(entry, ModuleType):
        return frozenset([entry.__name__]), ()
    target = getattr(entry, "fn", entry)
    if target.__module__.split(".")[0] in ("tasks", "flows") and inspect.isfunction(target):
        return function_reach(target)
    return frozenset([target.__module__]), ()


def stage_modules(*entries: Any, root: Path = ROOT) -> frozenset[str]:
    """Every project module a stage's entry points can run, derived from the imports."""
    roots = frozenset().union(*(_roots(e, root)[0] for e in entries))
    return module_closure(tuple(sorted(roots)), root)


@cache
def code_key(entries: tuple[Any, ...], root: Path = ROOT) -> str:
    """Hash of all the project code a stage can run (computed once per process): editing any
    module its entry points reach by imports invalidates its cached results, editing one they
    cannot reach does not (Prefect's TASK_SOURCE only sees the thin task function itself)."""
    h = hashlib.sha256()
    for name in sorted(stage_modules(*entries, root=root)):
        path = module_path(name, root)
        if path is None:  # the closure holds files only: a module gone mid-run is an error
            raise FileNotFoundError(f"module {name} vanished while its code key was computed")
        h.update(name.encode())
        h.update(read_source(path))
    for entry in entries:
        for text in _roots(entry, root)[1]:
            h.update(text.encode())
    return h.hexdigest()[:16]


def forget_code() -> None:
    """Drop the per-process code caches (after editing a module in the same process)."""
    for fn in (imports_of, module_closure, function_reach, code_key):
        fn.cache_clear()


def file_hash(path: str | Path | None) -> str | None:
    """Content hash of a local file (a checkpoint): its path says nothing about what it holds."""
    if path is None or not Path(path).is_file():
        return None
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _param(inputs: dict[str, Any], dotted: str) -> Any:
    """A parameter, or one attribute of it (`manifest.hash`: the content, not where it lives)."""
    name, *attrs = dotted.split(".")
    value = inputs.get(name)
    for attr in attrs:
        value = getattr(value, attr, None)
    return value


def _task_fn(ctx: Any) -> Callable[..., Any] | None:
    """The function of the task whose key is being made (None outside a task run)."""
    return getattr(getattr(ctx, "task", None), "fn", None)


def placed(cfg: PipelineConfig) -> PipelineConfig:
    """The config with its places as this process reads them: the work folder absolute and the
    tracking store resolved (a relative SQLite file made absolute). A result that names a file
    or a run is valid for that folder and that store only, so they belong in its key."""
    uri = resolve_tracking_uri(cfg.tracking.tracking_uri)
    if uri.startswith("sqlite:///"):
        uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    tracking = cfg.tracking.model_copy(update={"tracking_uri": uri})
    return cfg.model_copy(
        update={"work_dir": str(Path(cfg.work_dir).resolve()), "tracking": tracking}
    )


def _values(result: Any, field: str) -> list[Any]:
    """A field of a result (an attribute or a key), of each item of a list of results; a dict
    field gives its values."""
    if isinstance(result, list):
        return [v for item in result for v in _values(item, field)]
    value = result.get(field) if isinstance(result, dict) else getattr(result, field, None)
    if isinstance(value, dict):
        return list(value.values())
    return [] if value is None else [value]


@dataclass(frozen=True)
class Names:
    """What a stage's result names, checked before a cached result is reused: `files` fields
    hold paths or URIs (read where this run reads them), `runs` fields MLflow run ids, and
    `version` says the result is a registry version (`name`, `version`) in config's store."""

    files: tuple[str, ...] = ()
    runs: tuple[str, ...] = ()
    version: bool = False

    def gone(self, result: Any, config: PipelineConfig | None) -> str | None:
        """Why the cached `result` points at nothing here, or None when all it names exists."""
        for field in self.files:
            for uri in map(str, _values(result, field)):
                if not exists_uri(uri):
                    where = "" if Path(uri).is_absolute() or "://" in uri else f" in {Path.cwd()}"
                    return f"{field} {uri} is not there{where}"
        if config is None or not (self.runs or self.version):
            return None
        registry = MLflowRegistry(config.tracking.tracking_uri)
        for field in self.runs:
            for run_id in _values(result, field):
                if why := registry.run_gone(str(run_id)):
                    return why
        if self.version:
            return registry.version_gone(result.name, result.version)
        return None


GENERATIONS = 100  # re-runs of one key after what its results named was removed


def say(text: str) -> None:
    """One log line, in the task run's log when there is one."""
    try:
        get_run_logger().warning(text)
    except MissingContextError:
        log.warning(text)


def _checked(store: Any, key: str, gone: Callable[[Any], str | None]) -> str | None:
    """Why the result cached under `key` cannot be reused (a record that no longer loads, e.g.
    written by older code, counts as gone), or None."""
    try:
        result = store.read(key).result
    except Exception as err:  # whatever the serializer raises: the stage runs again instead
        return f"its cached record {key} cannot be read ({type(err).__name__}: {err})"
    return gone(result)


def usable_key(ctx: Any, key: str, gone: Callable[[Any], str | None]) -> str:
    """`key`, or the first of its generations (`key-1`, `key-2`, ...) whose cached result is
    absent or names only what exists: a result naming a removed file or run is never reused,
    and its stage runs again into the next generation (the shared store is never rewritten)."""
    store = getattr(ctx, "result_store", None)
    if store is None:
        return key
    why = None
    for n in range(GENERATIONS):
        candidate = key if n == 0 else f"{key}-{n}"
        if not store.exists(candidate):
            break
        why = _checked(store, candidate, gone)
        if why is None:
            return candidate
    else:  # every generation names something removed: run without a cached result to find
        candidate = f"{key}-{uuid.uuid4().hex}"
    if why is not None:
        name = getattr(getattr(ctx, "task", None), "name", "stage")
        say(f"cached {name} result not reused: {why}; running it again")
    return candidate


@dataclass
class CheckedPolicy(CompoundCachePolicy):
    """A compound key whose cached result is reused only while what it names exists."""

    names: Names | None = None

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        key = super().compute_key(task_ctx, inputs, flow_parameters, **kwargs)
        if key is None or self.names is None:
            return key
        names, config = self.names, inputs.get("config")
        return usable_key(task_ctx, key, lambda result: names.gone(result, config))


def keyed_on(
    *params: str,
    config_sections: Sequence[str] = (),
    files: Sequence[str] = (),
    code: Iterable[Any] = (),
    names: Names | None = None,
) -> CachePolicy:
    """The one way a stage's key is made: the task parameters it takes (references that carry
    content hashes, never tables or models; `ref.hash` keys on one attribute), the contents of
    the files named by `files`, the entries of its typed `config` that it reads (its places,
    the work folder and the tracking store, as this process resolves them), and the code it can
    run: every project module reachable by imports from the task's own function (and from any
    extra entry points in `code`). A stage re-runs when exactly what it depends on changes, or
    when what its cached result `names` is gone."""
    extra = tuple(code)

    def key(ctx: Any, inputs: dict[str, Any]) -> str:
        cfg = inputs.get("config")
        picked = config_digest(placed(cfg), config_sections) if config_sections else None
        contents = {f: file_hash(inputs.get(f)) for f in files}
        values = {p: _param(inputs, p) for p in params}
        fn = _task_fn(ctx)
        return digest(values, contents, picked, code_key((*extra, *([fn] if fn else []))))

    return CheckedPolicy(policies=[CacheKeyFnPolicy(cache_key_fn=key), TASK_SOURCE], names=names)


# Error codes of S3 and other AWS services that mean "slow down" or "try again later".
THROTTLED = frozenset(
    {"Throttling", "ThrottlingException", "SlowDown", "RequestLimitExceeded", "RequestTimeout",
     "TooManyRequestsException", "ServiceUnavailable", "InternalError", "RequestTimeTooSkewed"}
)  # fmt: skip
# Errnos of an OSError that can pass (a busy or briefly unreachable host or file system).
PASSING_ERRNOS = frozenset(
    {errno.EAGAIN, errno.EBUSY, errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH,
     errno.ENETDOWN, errno.ECONNABORTED, errno.ECONNRESET, errno.ECONNREFUSED, errno.EINTR}
)  # fmt: skip
PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, ValueError)


def _status(err: BaseException) -> int | None:
    """The HTTP status an error carries (botocore, requests, httpx, urllib), if any."""
    response = getattr(err, "response", None)
    if isinstance(response, dict):  # botocore's ClientError
        return response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    for owner in (err, response):
        for name in ("status_code", "code", "status"):
            value = getattr(owner, name, None)
            if isinstance(value, int) and 100 <= value < 600:
                return value
    return None


def _verdict(err: BaseException) -> bool | None:
    """One error on its own: True can pass, False cannot, None says nothing (look at its cause)."""
    if isinstance(err, TimeoutError | ConnectionError):
        return True
    if isinstance(err, PERMANENT):
        return False
    code = getattr(err, "response", None)
    if isinstance(code, dict) and code.get("Error", {}).get("Code") in THROTTLED:
        return True
    status = _status(err)
    if status is not None:
        return status >= 500 or status in (408, 429)
    names = {c.__name__ for c in type(err).__mro__}  # botocore/requests/httpx/urllib3 families
    if names & {"Timeout", "TimeoutException", "TimeoutError", "ConnectTimeoutError",
                "ReadTimeoutError", "EndpointConnectionError", "ConnectionClosedError",
                "ConnectError", "ProtocolError"}:  # fmt: skip
        return True
    if isinstance(err, OSError) and err.errno is not None:
        return err.errno in PASSING_ERRNOS
    return None


def transient(err: BaseException | None) -> bool:
    """Whether an error can pass by itself (a timeout, a dropped connection, throttling, a 5xx),
    read from the error and then its causes; a missing path, a refused permission, a bad setting
    or anything unknown cannot."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        verdict = _verdict(err)
        if verdict is not None:
            return verdict
        err = err.__cause__ or err.__context__
    return False


def retry_on_io(_task: Any, _task_run: Any, state: Any) -> bool:
    """Retry only what can pass (timeouts, throttling, 5xx); a missing path, a permission error
    or a bad setting fails at once, not four times over a minute."""
    err = getattr(state, "data", None)
    retry = isinstance(err, BaseException) and transient(err)
    if isinstance(err, BaseException) and not retry:
        say(f"not retried ({type(err).__name__} cannot pass by waiting): {err}")
    return retry


IO_RETRIES: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": [2, 10, 30],
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_on_io,
}
