"""The frame every command shares: flags given reach it as overrides, an error is one line and
exit code 1 (the trace behind --debug), and bad settings stop a flow before it starts."""

from __future__ import annotations

from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from skin.cli.command import command, run_flow
from skin.cli.options import TTA, ConfigOpt
from skin.cli.output import state


def toy_app() -> typer.Typer:
    """Two commands, framed like skin's: one fails with its overrides in the message."""
    app = typer.Typer()

    @command(app, "boom", TTA)
    def boom(config: ConfigOpt = None, *, overrides: dict[str, Any]) -> None:
        raise ValueError(f"bad {overrides}")

    @command(app, "fine")
    def fine() -> None:
        typer.echo("fine")

    return app


def test_an_error_is_one_line_on_stderr_and_exit_code_1() -> None:
    result = CliRunner().invoke(toy_app(), ["boom", "--no-tta"])
    assert result.exit_code == 1, result.output
    assert result.stderr == "error: ValueError: bad {'evaluate.tta': False}\n", result.stderr
    assert result.stdout == "", "nothing for scripts on stdout"
    assert CliRunner().invoke(toy_app(), ["fine"]).stdout == "fine\n"


def test_debug_shows_the_whole_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(state, "debug", True)
    result = CliRunner().invoke(toy_app(), ["boom"])
    assert isinstance(result.exception, ValueError) and "{}" in str(result.exception), result


def test_bad_settings_stop_a_flow_before_it_runs() -> None:
    calls: list[dict[str, Any]] = []

    def flow(**kwargs: Any) -> dict[str, Any]:
        calls.append(kwargs)
        return kwargs

    with pytest.raises(ValueError, match="balance"):
        run_flow(flow, None, {"split.balance": "sometimes"}, data_uri="d")
    assert not calls, "the flow ran on settings that do not validate"
    given = run_flow(flow, None, {"split.balance": "none"}, data_uri="d", folds=3)
    assert given == {
        "config_path": None,
        "overrides": {"split.balance": "none"},
        "data_uri": "d",
        "folds": 3,
    }
