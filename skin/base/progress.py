"""Progress bars on a terminal (rich), silence elsewhere: one factory the stages accept."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Advance = Callable[[int], None]
Factory = Callable[[str, int], Advance]  # (description, total) -> advance(n)


def silent(_: str, __: int) -> Advance:
    return lambda _n: None


@contextmanager
def terminal_bars(enabled: bool | None = None) -> Iterator[Factory]:
    """Bars for decoding, features and epochs when a person is watching (stderr is a TTY)."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield silent
        return
    from rich.progress import Progress

    with Progress(transient=False) as bars:

        def make(description: str, total: int) -> Advance:
            task = bars.add_task(description, total=total)
            return lambda n: bars.advance(task, n)

        yield make
