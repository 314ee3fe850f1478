"""The CLI's interface only grows: every command, option, argument and default recorded in
interface.txt is still there (new ones may be added; a removal or a changed default fails).

Regenerate the list (only when an interface change is intended and agreed):
    PYTHONPATH=. .venv/bin/python tests/cli/test_interface.py
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

RECORD = Path(__file__).with_name("interface.txt")
HEADER = (
    "# The `skin` CLI's interface: commands, their options and arguments, and defaults.\n"
    "# tests/cli/test_interface.py fails if any line goes missing (additions are fine).\n"
    "# Regenerate: PYTHONPATH=. .venv/bin/python tests/cli/test_interface.py\n"
)


def interface(app: typer.Typer) -> list[str]:
    """One line per command, per option or argument name, and per default, sorted."""
    return sorted(set(_lines(typer.main.get_command(app), "skin")))


def _lines(command: Any, path: str) -> Iterator[str]:
    """Duck-typed: Typer ships its own copy of click, so no isinstance on click's classes."""
    yield path
    for param in command.params:
        if param.param_type_name == "argument":
            names = [f"<{param.name}>"]
        else:
            names = [*param.opts, *param.secondary_opts]
        yield from (f"{path} {name}" for name in names)
        default = param.default if not callable(param.default) else "<dynamic>"
        yield f"{path} {names[0]} default={default!r}"
        if param.param_type_name == "option" and param.envvar:
            yield f"{path} {names[0]} envvar={param.envvar!r}"
    for name, sub in getattr(command, "commands", {}).items():
        yield from _lines(sub, f"{path} {name}")


def recorded() -> list[str]:
    return [line for line in RECORD.read_text().splitlines() if line and not line.startswith("#")]


def test_every_recorded_command_option_and_default_is_still_there() -> None:
    from skin.cli import app

    missing = sorted(set(recorded()) - set(interface(app)))
    assert not missing, "the CLI lost (or changed) what scripts rely on:\n" + "\n".join(missing)


def test_the_record_covers_nested_commands() -> None:
    lines = set(recorded())
    assert {"skin run --epochs", "skin notify setup --webhook", "skin predict <targets>"} <= lines


def test_a_lost_option_or_changed_default_is_seen() -> None:
    """The check can fail: a second version of a toy app drops an option and changes a default."""
    first, second = typer.Typer(), typer.Typer()

    @first.command("go")
    def go_first(a: int = 1, b: int = 2) -> None: ...

    @second.command("go")
    def go_second(a: int = 1, c: int = 3) -> None: ...

    @first.command("stay")
    def stay_first(seed: int = 0) -> None: ...

    @second.command("stay")
    def stay_second(seed: int = 1) -> None: ...

    lost = sorted(set(interface(first)) - set(interface(second)))
    assert lost == ["skin go --b", "skin go --b default=2", "skin stay --seed default=0"], lost


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from skin.cli import app

    RECORD.write_text(HEADER + "\n".join(interface(app)) + "\n")
    print(f"wrote {RECORD}")
