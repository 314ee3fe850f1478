"""What an evaluation leaves, apart from the torch code that evaluates: a cached re-run reads
it without importing torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class EvalOutcome:
    """What an evaluation found: metrics, the bias/variance reading, reports, the logged model."""

    run_id: str
    metrics: dict[str, float]
    diagnosis: str
    report_dir: str
    url: str | None = None
    model_uri: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
