"""What the commands print: JSON for scripts (--json), rich tables and lines for people, nothing
but errors with --quiet; progress bars on stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from rich.progress import Progress

    from skin.release.registry import Registration

console = Console()
err_console = Console(stderr=True)
state: dict[str, bool] = {"debug": False, "json": False, "quiet": False}
PLAIN_MAX = 10_000  # columns a plain table may take in a pipe or a log (it never wraps a cell)


def silent() -> bool:
    """--json or --quiet: nothing for humans on stdout."""
    return state["json"] or state["quiet"]


def emit(data: Any, table: Table | None = None) -> None:
    """Print JSON in --json mode, else the rich table (nothing with --quiet); a flow's result
    (a dataclass with `to_dict`) prints as the dict it has always printed as."""
    if state["json"]:
        plain = data.to_dict() if hasattr(data, "to_dict") else data
        sys.stdout.write(json.dumps(plain, indent=2, default=str) + "\n")
    elif not state["quiet"] and table is not None:
        print_table(table)


def print_table(table: Table) -> None:
    """On a terminal as rich draws it; in a pipe or a log a plain table as wide as its content,
    so that no value breaks over two lines inside its cell."""
    if console.is_terminal:
        console.print(table)
        return
    table.box = box.SIMPLE
    need = Console(file=console.file, width=PLAIN_MAX).measure(table).maximum
    Console(file=console.file, width=max(need, 1)).print(table)


def info(message: str) -> None:
    """A line for people (none with --json or --quiet)."""
    if not silent():
        console.print(message, highlight=False)


def show(result: Any, table: Table | None = None, *lines: str | None) -> None:
    """A command's result: `emit`ted, then its `notes` for people."""
    emit(result, table)
    notes(*lines)


def notes(*lines: str | None) -> None:
    """Lines for people, each with `info`; a None line is left out."""
    for line in lines:
        if line is not None:
            info(line)


def progress() -> Progress:
    """A progress bar on stderr, hidden when stdout is for scripts."""
    from rich.progress import Progress

    return Progress(console=err_console, disable=silent())


def frame_table(df: Any, title: str) -> Table:
    """A data frame as a table: its index in bold, floats to four places."""
    table = Table(title=title)
    table.add_column(df.index.name or "", style="bold")
    for col in df.columns:
        table.add_column(str(col), justify="right")
    for idx, row in df.iterrows():
        table.add_row(str(idx), *(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row))
    return table


def count_table(title: str, column: str, counts: Mapping[str, int]) -> Table:
    """Images per label (class or prediction), in the order given."""
    table = Table(title=title)
    table.add_column(column, style="bold")
    table.add_column("images", justify="right")
    for label, n in counts.items():
        table.add_row(str(label), str(n))
    return table


def metrics_table(metrics: dict[str, float], title: str) -> Table:
    """Metrics per split, each with its 95 % interval in brackets; bias/variance as caption."""
    from skin.evaluate.report import abstention_line, bias_variance_line, metrics_table_text

    table = frame_table(metrics_table_text(metrics), title)
    table.caption = bias_variance_line(metrics)
    if any(k.endswith("_ci_low") for k in metrics):
        table.caption += " · [95 % bootstrap interval over lesions]"
    unk = abstention_line(metrics)
    if unk:
        table.caption += f"\n{unk}"
    return table


def reasons(counts: Mapping[str, int]) -> str:
    """Skipped images by reason, on one line."""
    return ", ".join(f"{reason}: {n}" for reason, n in counts.items())


def registration_line(reg: Registration | None) -> str | None:
    """The promotion gate's verdict, if the command registered a model."""
    if reg is None:
        return None
    return f"registry: {reg.name} v{reg.version} → [bold]{reg.alias}[/]: {reg.reason}"
