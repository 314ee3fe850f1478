"""What a training leaves (its record, JSON-able), apart from the torch code that trains: a
cached re-run reads it without importing torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class TrainOutcome:
    """What a training left: its run folder, best checkpoint, epochs and history (JSON-able)."""

    run_id: str
    run_dir: str
    best_checkpoint: str
    best_epoch: int
    last_epoch: int
    resumed_from: int | None
    stopped_early: bool
    feature_path: bool
    bad_images: int
    history: list[dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
