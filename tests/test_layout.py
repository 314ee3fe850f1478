"""Tests mirror the modules: every module of 40 lines or more in skin/, tasks/ and flows/ has its
test file, so a reader finds a module's promises beside its name."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIN_LINES = 40
# Owed, not exempt: the CLI's command groups (split out of one skin/cli.py) are tested through the
# `skin` app in tests/cli/test_cli.py, test_cli_data.py and test_interface.py until each has its
# own file. The list only shrinks: a module that gets its test file must leave it.
OWED = frozenset(
    f"skin/cli/{name}.py"
    for name in ("data", "main", "monitor", "options", "pipeline", "search", "server")
)


def mirror_of(module: Path) -> list[Path]:
    """Where a module's tests may live: tests/<floor>/test_<module>.py for skin/<floor>/<module>.py
    (test_<floor>.py for a floor's own __init__), tests/tasks/test_<module>.py, and
    tests/flows/ or tests/e2e/ for a flow."""
    rel = module.relative_to(ROOT)
    top, parts = rel.parts[0], rel.parts[1:]
    name = rel.parent.name if rel.stem == "__init__" else rel.stem
    if top == "skin":
        return [ROOT / "tests" / Path(*parts).parent / f"test_{name}.py"]
    if top == "tasks":
        return [ROOT / "tests" / "tasks" / f"test_{name}.py"]
    return [ROOT / "tests" / folder / f"test_{name}.py" for folder in ("flows", "e2e")]


def modules() -> list[Path]:
    """Every module of MIN_LINES lines or more; a package's __init__ only below the top."""
    found = []
    for top in ("skin", "tasks", "flows"):
        for path in sorted((ROOT / top).rglob("*.py")):
            if path.name == "__init__.py" and path.parent == ROOT / top:
                continue
            if len(path.read_text().splitlines()) >= MIN_LINES:
                found.append(path)
    return found


def test_every_module_has_its_test_file() -> None:
    lacking = {
        str(m.relative_to(ROOT)): mirror_of(m)[0].relative_to(ROOT)
        for m in modules()
        if not any(t.is_file() for t in mirror_of(m))
    }
    missing = [f"{m} -> {t}" for m, t in lacking.items() if m not in OWED]
    assert not missing, "modules without their test file:\n  " + "\n  ".join(missing)
    paid = sorted(OWED - set(lacking))
    assert not paid, f"these have their test file now (or are gone): drop them from OWED: {paid}"


def test_the_rule_sees_every_floor_and_maps_each_kind_of_module() -> None:
    """The rule can fail: it finds the modules (not an empty walk) and maps each kind."""
    found = {m.relative_to(ROOT).parts[0] for m in modules()}
    assert found == {"skin", "tasks", "flows"} and len(modules()) > 60, len(modules())
    assert mirror_of(ROOT / "skin" / "train" / "stage.py") == [
        ROOT / "tests" / "train" / "test_stage.py"
    ]
    assert mirror_of(ROOT / "skin" / "cli" / "__init__.py") == [ROOT / "tests/cli/test_cli.py"]
    assert mirror_of(ROOT / "tasks" / "drift.py") == [ROOT / "tests" / "tasks" / "test_drift.py"]
    assert mirror_of(ROOT / "flows" / "cv.py") == [
        ROOT / "tests" / "flows" / "test_cv.py",
        ROOT / "tests" / "e2e" / "test_cv.py",
    ]
