"""matplotlib for the reports' charts, headless (Agg), imported the first time a chart is drawn."""

from __future__ import annotations

from types import ModuleType


def pyplot() -> ModuleType:
    """`matplotlib.pyplot` on the Agg backend. Imported here, not at the top: matplotlib costs
    ~0.5 s at start-up, and most commands (a prediction, a cached re-run) draw nothing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
