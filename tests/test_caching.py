"""Cache keys (tasks/caching.py): made of content, the config entries a stage reads, and code."""

from __future__ import annotations

from pathlib import Path

import pytest

from skin.config import ConfigError, config_digest, load_config
from skin.datastages import ManifestRef
from tasks.caching import file_hash, keyed_on


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

    here = Path(__file__).resolve().parents[1]
    for pkg in ("skin", "tasks", "flows"):
        shutil.copytree(here / pkg, dst / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def test_evaluate_stage_reaches_the_statistics_it_imports(tmp_path: Path) -> None:
    from tasks.caching import code_key, forget_code, stage_modules
    from tasks.training import evaluate_task, train_task

    found = stage_modules(evaluate_task.fn)
    missed = {"skin.bootstrap", "skin.calibration", "skin.operating", "skin.slices", "skin.predict"}
    assert missed <= found, f"evaluate's code key misses {sorted(missed - found)}"
    assert {"skin.augment", "skin.labels", "skin.manifest"} <= stage_modules(train_task.fn)
    assert "skin.cli" not in found and "skin.registry" not in found, "nothing evaluate can't reach"

    root = copy_project(tmp_path)
    before = code_key((evaluate_task.fn,), root)
    with (root / "skin/cli.py").open("a") as fh:
        fh.write("\n# an edit outside evaluate's reach\n")
    forget_code()
    assert code_key((evaluate_task.fn,), root) == before
    with (root / "skin/bootstrap.py").open("a") as fh:
        fh.write("\nLEVEL = 0.9  # an edit evaluate imports\n")
    forget_code()
    assert code_key((evaluate_task.fn,), root) != before, "stale intervals would be served"
