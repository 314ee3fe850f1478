"""The frame every command shares: registered with its config flags, settings checked before any
work starts, the flow run, and an error turned into one readable line and exit code 1."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import TYPE_CHECKING, Any, TypeVar

import typer

from skin.cli.options import Flag, config_flags
from skin.cli.output import err_console, state

if TYPE_CHECKING:
    from skin.base.config import PipelineConfig

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


def command(group: typer.Typer, name: str, *flags: Flag) -> Callable[[F], F]:
    """Make `func` the command `name` of `group`; its config `flags` reach it as `overrides`."""

    def decorate(func: F) -> F:
        body = friendly_errors(config_flags(*flags)(func) if flags else func)
        group.command(name)(body)
        return body

    return decorate


def friendly_errors(func: F) -> F:
    """Errors as one readable line (exit 1); the full trace behind --debug."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as err:
            if state["debug"]:
                raise
            err_console.print(f"[bold red]error:[/] {type(err).__name__}: {err}", highlight=False)
            raise typer.Exit(1) from err

    return wrapper  # type: ignore[return-value]


def check_settings(
    config: str | None, overrides: dict[str, Any], data: str | None
) -> PipelineConfig:
    """Fail fast on bad settings, before Prefect or any work starts."""
    from flows.common import resolve_config

    return resolve_config(config, overrides, data)


def run_flow(
    flow: Callable[..., T], config: str | None, overrides: dict[str, Any], **kwargs: Any
) -> T:
    """The settings checked (with `data_uri`, if given), then `flow` run with them."""
    check_settings(config, overrides, kwargs.get("data_uri"))
    return flow(config_path=config, overrides=overrides, **kwargs)
