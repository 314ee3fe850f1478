"""An ensemble as a predictor: the mean of probabilities, its own temperature, refusals by name.

Whole ensembles built from trained members are tested in tests/search/test_ensemble.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from skin.serve.averaging import (
    PROB_FLOOR,
    EnsembleError,
    calibrate_mean,
    ensemble_logits,
    ensemble_rule,
    ensemble_temperature,
)
from skin.stats.abstain import Abstention


def test_temperature_one_serves_the_plain_mean_and_others_sharpen_or_soften_it() -> None:
    mean = np.array([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    assert calibrate_mean(mean, 1.0) is mean, "T = 1: the members' mean, untouched"
    soft, sharp = calibrate_mean(mean, 2.0), calibrate_mean(mean, 0.5)
    np.testing.assert_allclose(soft.sum(1), 1.0)
    assert (soft.max(1) < mean.max(1)).all() and (sharp.max(1) > mean.max(1)).all()
    assert (soft.argmax(1) == mean.argmax(1)).all(), "a temperature never changes the answer"


def test_a_zero_probability_has_a_floored_log() -> None:
    logits = ensemble_logits(np.array([[1.0, 0.0]]))
    assert np.isfinite(logits).all() and logits[0, 1] == pytest.approx(np.log(PROB_FLOOR))


@pytest.mark.parametrize("value", [0, -1.0, float("inf"), "2", True])
def test_a_bad_stored_temperature_is_refused_naming_the_file(value: object) -> None:
    with pytest.raises(EnsembleError, match=r"members\.json"):
        ensemble_temperature({"temperature": value}, Path("ens/members.json"))


def test_an_old_members_file_without_a_temperature_serves_the_plain_mean() -> None:
    assert ensemble_temperature({}, Path("members.json")) == 1.0


def test_only_an_msp_rule_can_abstain_on_averaged_probabilities() -> None:
    msp = Abstention("msp", 0.4)
    assert ensemble_rule(msp, "here") is msp and ensemble_rule(None, "here") is None
    with pytest.raises(EnsembleError, match="energy needs logits"):
        ensemble_rule(Abstention("energy", -3.0), "here")
