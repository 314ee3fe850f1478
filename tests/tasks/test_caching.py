"""Cache keys (tasks/caching.py): made of content, the config entries a stage reads, and code."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from skin.base.config import ConfigError, config_digest, load_config
from skin.data.stages import ManifestRef
from skin.data.storage import StorageError
from tasks.caching import IO_RETRIES, file_hash, keyed_on, transient
from tests.helpers import tracking_db


def key_fn(*params: str, **kwargs):
    policy = keyed_on(*params, **kwargs)
    fn = next(p for p in policy.policies if hasattr(p, "cache_key_fn")).cache_key_fn
    return lambda **inputs: fn(None, inputs)


def test_key_follows_file_content_not_its_path(tmp_path: Path) -> None:
    key = key_fn(files=("checkpoint",))
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"epoch 3")
    first = key(checkpoint=str(ckpt))
    ckpt.write_bytes(b"epoch 7")
    assert key(checkpoint=str(ckpt)) != first, "same path, other weights: another key"
    copy = tmp_path / "copy.pt"
    copy.write_bytes(b"epoch 7")
    assert key(checkpoint=str(copy)) == key(checkpoint=str(ckpt)), "same content: same key"
    assert file_hash(tmp_path / "missing.pt") is None


def test_key_reads_only_the_config_entries_named() -> None:
    key = key_fn(config_sections=("train.image_size", "evaluate"))
    base = load_config(None, {"model.name": "test_resnet"})
    assert key(config=base) != key(config=base.model_copy(
        update={"train": base.train.model_copy(update={"image_size": 40})}))  # fmt: skip
    other_lr = base.model_copy(update={"train": base.train.model_copy(update={"lr": 0.5})})
    assert key(config=base) == key(config=other_lr), "an entry the stage does not read"


def test_key_on_an_attribute_of_a_reference() -> None:
    key = key_fn("manifest.hash")
    a = ManifestRef(uri="/a/manifest-1.parquet", hash="abc", dataset="d", images=3)
    b = ManifestRef(uri="/b/other.parquet", hash="abc", dataset="d", images=3, previous_uri="x")
    c = ManifestRef(uri="/a/manifest-1.parquet", hash="def", dataset="d", images=3)
    assert key(manifest=a) == key(manifest=b), "content, not lineage or path"
    assert key(manifest=a) != key(manifest=c)


def test_config_digest_names_a_missing_entry() -> None:
    cfg = load_config(None, {"model.name": "test_resnet"})
    assert config_digest(cfg, ("split.seed",)) != config_digest(
        cfg.model_copy(update={"split": cfg.split.model_copy(update={"seed": 1})}), ("split.seed",)
    )
    with pytest.raises(ConfigError, match=r"split\.sede"):
        config_digest(cfg, ("split.sede",))


# --------------------------------------------------------------------------- code keys


def write_package(root: Path, files: dict[str, str]) -> Path:
    """A small project tree under `root` (module path -> source)."""
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


TOY = {
    "skin/__init__.py": "",
    "skin/stage.py": "from skin import helper\n\ndef run():\n    from .data import split\n",
    "skin/helper.py": "import numpy\nfrom skin.data.split import cut\n",
    "skin/data/__init__.py": "",
    "skin/data/split.py": "from ..labels import CLASSES\n\ndef cut(): ...\n",
    "skin/labels.py": "CLASSES = ('MEL',)\n",
    "skin/unused.py": "from skin import stage\n",
}


def test_closure_follows_imports_in_functions_relative_and_sub_packages(tmp_path: Path) -> None:
    from tasks.caching import module_closure

    root = write_package(tmp_path, TOY)
    found = module_closure(("skin.stage",), root)
    assert found == {
        "skin", "skin.stage", "skin.helper", "skin.data", "skin.data.split", "skin.labels"
    }, "imports inside functions, relative ones and `from pkg import submodule` all count"  # fmt: skip
    assert "skin.unused" not in found, "a module importing the stage is not reached by it"


def test_code_key_changes_with_a_module_inside_the_closure_only(tmp_path: Path) -> None:
    from tasks.caching import code_key, forget_code

    root = write_package(tmp_path, TOY)
    before = code_key(("skin.stage",), root)
    (root / "skin/unused.py").write_text("from skin import stage  # edited\n")
    forget_code()
    assert code_key(("skin.stage",), root) == before, "a module the stage cannot reach"
    (root / "skin/labels.py").write_text("CLASSES = ('MEL', 'NV')\n")
    forget_code()
    assert code_key(("skin.stage",), root) != before, "a module two imports away, in a sub-package"


def copy_project(dst: Path) -> Path:
    """The project's packages in a temp folder, to edit without touching the real files."""
    import shutil

    here = Path(__file__).resolve().parents[2]
    for pkg in ("skin", "tasks", "flows"):
        shutil.copytree(here / pkg, dst / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def test_evaluate_stage_reaches_the_statistics_it_imports(tmp_path: Path) -> None:
    from tasks.caching import code_key, forget_code, stage_modules
    from tasks.training import evaluate_task, train_task

    found = stage_modules(evaluate_task.fn)
    missed = {
        "skin.stats.bootstrap", "skin.stats.calibration", "skin.stats.operating", "skin.stats.slices",
        "skin.serve.predict",
    }  # fmt: skip
    assert missed <= found, f"evaluate's code key misses {sorted(missed - found)}"
    assert {"skin.train.augment", "skin.base.labels", "skin.data.manifest"} <= stage_modules(
        train_task.fn
    )
    assert "skin.cli" not in found and "skin.release.registry" not in found, (
        "nothing evaluate can't reach"
    )

    root = copy_project(tmp_path)
    before = code_key((evaluate_task.fn,), root)
    with (root / "skin/cli/__init__.py").open("a") as fh:
        fh.write("\n# an edit outside evaluate's reach\n")
    forget_code()
    assert code_key((evaluate_task.fn,), root) == before
    with (root / "skin/stats/bootstrap.py").open("a") as fh:
        fh.write("\nLEVEL = 0.9  # an edit evaluate imports\n")
    forget_code()
    assert code_key((evaluate_task.fn,), root) != before, "stale intervals would be served"


# --------------------------------------------------------------------------- validity


def test_the_work_folder_and_tracking_store_are_keyed_where_this_process_reads_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The defaults (`.skin`, `sqlite:///mlflow.db`) are relative: the same words in two
    folders are two places, and a result naming one is not valid in the other."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    key = key_fn(config_sections=("work_dir", "tracking"))
    cfg = load_config(None, {"model.name": "test_resnet"})
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    in_a = key(config=cfg)
    assert key(config=cfg) == in_a, "the same folder: the same key"
    monkeypatch.chdir(tmp_path / "b")
    assert key(config=cfg) != in_a, "another folder: another work dir and mlflow.db"
    db = f"sqlite:///{tmp_path / 'a' / 'mlflow.db'}"
    tracking = cfg.tracking.model_copy(update={"tracking_uri": db})
    absolute = cfg.model_copy(
        update={"work_dir": str(tmp_path / "a" / ".skin"), "tracking": tracking}
    )
    assert key(config=absolute) == in_a, "a relative path is keyed as the file it reads"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", db)
    monkeypatch.chdir(tmp_path / "a")
    assert key(config=cfg) == in_a, "the env var naming the same store: the same key"


class FakeStore:
    """The two calls a result store answers for `usable_key`."""

    def __init__(self, records: dict[str, Any]) -> None:
        self.records = records

    def exists(self, key: str) -> bool:
        return key in self.records

    def read(self, key: str) -> Any:
        if isinstance(self.records[key], Exception):
            raise self.records[key]
        return SimpleNamespace(result=self.records[key])


def test_a_cached_result_naming_what_is_gone_is_not_reused_and_one_line_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from tasks.caching import usable_key

    def gone(result: str) -> str | None:
        return None if result.startswith("ok") else f"{result} is not there"

    def ctx(records: dict[str, Any]) -> Any:
        return SimpleNamespace(result_store=FakeStore(records), task=SimpleNamespace(name="t"))

    with caplog.at_level(logging.WARNING, logger="tasks.caching"):
        assert usable_key(ctx({}), "k", gone) == "k", "nothing cached: the key itself"
        assert usable_key(ctx({"k": "ok"}), "k", gone) == "k", "valid: reused"
        assert not caplog.records, "nothing was gone: nothing said"
        assert usable_key(ctx({"k": "run r1"}), "k", gone) == "k-1", "gone: runs again"
        assert len(caplog.records) == 1 and "run r1 is not there" in caplog.text
        caplog.clear()
        second = {"k": "run r1", "k-1": "ok again"}
        assert usable_key(ctx(second), "k", gone) == "k-1", "the re-run's result is reused"
        assert not caplog.records, "the re-run's own result is valid: nothing said"
        broken = {"k": ModuleNotFoundError("old code")}
        assert usable_key(ctx(broken), "k", gone) == "k-1", "a record that no longer loads"
        assert "cannot be read" in caplog.text


def test_names_checks_files_where_this_run_reads_them_and_runs_in_its_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    from tasks.caching import Names

    monkeypatch.chdir(tmp_path)
    db = tracking_db(tmp_path)
    cfg = load_config(None, {"model.name": "test_resnet", "tracking.tracking_uri": db})
    Path(".skin").mkdir()
    Path(".skin/best.pt").write_bytes(b"w")
    client = MlflowClient(tracking_uri=db)
    run = client.create_run(client.create_experiment("names")).info.run_id
    names = Names(files=("best_checkpoint",), runs=("run_id",))
    assert names.gone({"best_checkpoint": ".skin/best.pt", "run_id": run}, cfg) is None
    why = names.gone({"best_checkpoint": ".skin/gone.pt", "run_id": run}, cfg)
    assert why is not None and ".skin/gone.pt" in why and str(tmp_path) in why, why
    why = names.gone({"best_checkpoint": ".skin/best.pt", "run_id": "0" * 32}, cfg)
    assert why is not None and "0" * 32 in why, why
    client.delete_run(run)
    assert "deleted" in (names.gone({"best_checkpoint": ".skin/best.pt", "run_id": run}, cfg) or "")
    refs = [ManifestRef(uri=".skin/best.pt", hash="a", dataset="d", images=1)] * 2
    assert Names(files=("uri",)).gone(refs, cfg) is None, "a list of references: each checked"


def _client_error(code: str, status: int) -> Exception:
    from botocore.exceptions import ClientError

    response = {
        "Error": {"Code": code, "Message": code},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "GetObject")  # type: ignore[arg-type]


def _wrapped(cause: BaseException) -> StorageError:
    """How the stores report an S3 failure: a StorageError raised from botocore's."""
    try:
        raise StorageError("cannot read s3://b/k") from cause
    except StorageError as err:
        return err


def test_transient_errors_can_pass_permanent_ones_cannot() -> None:
    from botocore.exceptions import EndpointConnectionError, ReadTimeoutError

    passing = [
        TimeoutError("read timed out"),
        ConnectionResetError("reset by peer"),
        _wrapped(_client_error("SlowDown", 503)),
        _wrapped(_client_error("InternalError", 500)),
        _wrapped(_client_error("Throttling", 400)),
        _wrapped(EndpointConnectionError(endpoint_url="http://127.0.0.1:9")),
        _wrapped(ReadTimeoutError(endpoint_url="http://127.0.0.1:9")),
    ]
    lasting = [
        FileNotFoundError(2, "No such file or directory", "/data/isic"),
        PermissionError(13, "Permission denied", "/data/isic"),
        StorageError("data folder not found: /data/isic"),
        ConfigError("invalid configuration: train.epochs"),
        _wrapped(_client_error("NoSuchBucket", 404)),
        _wrapped(_client_error("AccessDenied", 403)),
        RuntimeError("shapes do not match"),
    ]
    assert [e for e in passing if not transient(e)] == [], "these can pass: retry them"
    assert [e for e in lasting if transient(e)] == [], "these cannot pass: fail at once"


@pytest.mark.server
def test_a_missing_path_fails_at_once_and_a_timeout_is_retried(prefect_api: None) -> None:
    from prefect import flow, task

    calls: dict[str, int] = {}
    fast = {**IO_RETRIES, "retry_delay_seconds": 0, "retry_jitter_factor": None}

    @task(**fast)
    def failing(kind: str) -> None:
        calls[kind] = calls.get(kind, 0) + 1
        raise FileNotFoundError(kind) if kind == "missing" else TimeoutError(kind)

    @flow
    def both() -> None:
        for kind in ("missing", "timeout"):
            failing(kind, return_state=True)

    both()
    assert calls == {"missing": 1, "timeout": 1 + IO_RETRIES["retries"]}, calls
