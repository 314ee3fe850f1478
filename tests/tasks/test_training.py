"""The model tasks' cache keys: a rewritten checkpoint or a changed setting is never served stale."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers import tracking_db
from tests.recipes import TINY

pytestmark = [pytest.mark.slow, pytest.mark.server]  # trains through Prefect flows


def test_rewritten_checkpoint_is_evaluated_again(
    tmp_path: Path, sample_data: Path, prefect_api
) -> None:
    from flows.stages import evaluate_flow, split_flow, train_flow

    ov = {**TINY, "train.epochs": 3, "work_dir": str(tmp_path / "work"),
          "tracking.tracking_uri": tracking_db(tmp_path),
          "tracking.log_model": False}  # fmt: skip
    split_flow(data_uri=str(sample_data), overrides=ov)
    trained = train_flow(data_uri=str(sample_data), overrides=ov)
    first = evaluate_flow(run_id=trained["run_id"], overrides=ov)
    assert first["stages"] == {"evaluate": "ran"}
    assert first["metrics"]["best_epoch"] == trained["best_epoch"]

    # What resuming with more epochs does: best.pt now holds other weights, same path.
    ckpts = Path(trained["run_dir"]) / "checkpoints"
    other = next(e for e in (1, 2, 3) if e != trained["best_epoch"])
    best = ckpts / "best.pt"
    best.unlink()
    shutil.copyfile(ckpts / f"epoch_{other:04d}.pt", best)
    again = evaluate_flow(run_id=trained["run_id"], overrides=ov)
    assert again["stages"] == {"evaluate": "ran"}, "a rewritten best.pt is evaluated again"
    assert again["metrics"]["best_epoch"] == other

    # Settings evaluation reads (the input size, the batch size) are in its key too.
    resized = evaluate_flow(run_id=trained["run_id"], overrides={**ov, "train.image_size": 40})
    assert resized["stages"] == {"evaluate": "ran"}
    cached = evaluate_flow(run_id=trained["run_id"], overrides={**ov, "train.image_size": 40})
    assert cached["stages"] == {"evaluate": "cached"}, "unchanged inputs still come from cache"
