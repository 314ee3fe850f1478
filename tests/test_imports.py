"""The import contract in pyproject.toml ([tool.importlinter]) holds: imports point one way and
skin/ has no circle, imports inside functions included."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`lint-imports` of this venv, run in `cwd` (which holds the contract), without its cache."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_the_import_contract_is_kept() -> None:
    out = lint_imports(ROOT)
    report = out.stdout + out.stderr
    assert out.returncode == 0, f"lint-imports: a contract is broken:\n{report[-3000:]}"
    assert "BROKEN" not in report and report.count("KEPT") >= 4, report[-2000:]


def test_a_circle_breaks_the_contract(tmp_path: Path) -> None:
    """The contract can fail: a package whose two modules import each other, one inside a
    function (the kind of import that hid skin's old circle), is refused."""
    pkg = tmp_path / "loop"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from loop import b\n")
    (pkg / "b.py").write_text("def f():\n    from loop import a\n    return a\n")
    (tmp_path / ".importlinter").write_text(
        "[importlinter]\nroot_package = loop\n\n"
        "[importlinter:contract:one]\nname = no circle\ntype = acyclic_siblings\nancestors = loop\n"
    )
    out = lint_imports(tmp_path, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert out.returncode != 0 and "BROKEN" in out.stdout, out.stdout[-2000:] + out.stderr


def test_a_project_import_inside_a_function_says_why() -> None:
    """An import inside a function hides a dependency (it hid skin's circle for a year): inside
    skin/ one of our own modules may be imported in a function only with a comment saying why
    (an optional heavy dependency behind it, such as MLflow). The CLI is exempt: it imports its
    flows per command to start fast."""
    silent = []
    for path in sorted((ROOT / "skin").rglob("*.py")):
        if path.parent.name == "cli":
            continue
        lines = path.read_text().splitlines()
        for fn in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                names = _imported(node)
                own = [n for n in names if n.split(".")[0] in ("skin", "tasks", "flows")]
                if own and not any(
                    "#" in line for line in lines[node.lineno - 2 : node.end_lineno]
                ):
                    silent.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {own}")
    assert not silent, "imports inside functions without a reason:\n" + "\n".join(silent)


def _imported(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return [node.module]
    return []


# What a cached re-run needs must not pull the libraries that only running a stage needs: torch,
# torchvision and timm alone take seconds to import (scikit-learn and scipy one more).
HEAVY = ("torch", "torchvision", "timm", "sklearn", "scipy", "mlflow")
LIGHT = (
    "skin.cli",
    "flows.pipeline",
    "flows.server",
    "tasks.training",
    "tasks.drift",
    "tasks.shards",
    # The types a cached stage's pickled result is read back as:
    "skin.train.outcome",
    "skin.evaluate.outcome",
    "skin.release.registry",
    "skin.data.stages",
    "skin.monitor.drift",
)


def test_the_cached_run_path_imports_no_heavy_library(tmp_path: Path) -> None:
    """In a fresh interpreter: the CLI, the pipeline flow, its tasks and the result types load,
    and a config naming a timm model is validated, without torch, timm, sklearn, scipy or
    mlflow (once the installed timm's model names are remembered)."""
    from skin.base.config import timm_models_file

    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(tmp_path)}
    names = tmp_path / timm_models_file().relative_to(timm_models_file().parents[1])
    names.parent.mkdir(parents=True)
    names.write_text("tf_efficientnet_lite0\n")
    code = (
        "import importlib, sys\n"
        f"for m in {LIGHT!r}: importlib.import_module(m)\n"
        "from flows.common import resolve_config\n"
        "cfg = resolve_config('configs/demo.yaml', {}, None)\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", f"imported: {out.stdout.strip()}"
