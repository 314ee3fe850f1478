"""skin-check-drift's own checks: without a champion it says what to do."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.drift import require_champion
from skin.base.config import load_config


def test_without_a_champion_the_drift_check_says_what_to_do(tmp_path: Path) -> None:
    cfg = load_config(None, {"tracking.tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                             "tracking.registered_model": "never-registered"})  # fmt: skip
    with pytest.raises(LookupError) as err:
        require_champion(cfg)
    text = str(err.value)
    assert "no champion of never-registered" in text and "--against" in text, text
    assert "not found" not in text, f"MLflow's own words are not the answer: {text}"
