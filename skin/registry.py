"""The promotion gate: `champion` moves only to a model that beats it on dev.

The policy (`decide`, `gate`) is pure; `register_and_gate` applies it to the registry through the
tracking seam (`skin.tracking.MLflowRegistry`).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

from skin.tracking import MissingRecordError, MLflowRegistry

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
GATE_METRIC = "dev_balanced_accuracy"
DESCRIPTION = "ISIC 2019 skin-lesion classifier (skin)"


class RegistryError(ValueError):
    """A model cannot be registered (its run has no score to gate on); says which and why."""


@dataclass(frozen=True)
class Champion:
    """The current champion: its version and score, or why the score cannot be read."""

    version: str
    score: float | None
    problem: str | None = None


@dataclass(frozen=True)
class Registration:
    """What registering one run's model did to the registry."""

    name: str
    version: str
    alias: str
    score: float
    champion_score: float | None
    previous_champion: str | None
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(score: float, champion_score: float | None) -> str:
    """Strictly better than the champion (or no champion yet) wins; ties and regressions wait."""
    if champion_score is None or score > champion_score:
        return CHAMPION
    return CHALLENGER


def gate(score: float, champion: Champion | None, metric: str = GATE_METRIC) -> tuple[str, str]:
    """(alias, reason). Only "no champion at all" promotes unconditionally: a champion whose
    score cannot be read is never replaced blindly."""
    if champion is None:
        return CHAMPION, f"{metric} {score:.4f}; no champion yet"
    if champion.score is None:
        return CHALLENGER, (
            f"{metric} {score:.4f}, but champion v{champion.version}'s {metric} cannot be read"
            f" ({champion.problem}): not promoted; compare them and move the alias by hand"
        )
    alias = decide(score, champion.score)
    return alias, f"{metric} {score:.4f} vs champion v{champion.version} {champion.score:.4f}"


def read_champion(registry: MLflowRegistry, name: str, metric: str) -> Champion | None:
    """The champion of `name`, with its score or the reason it cannot be read; None if none."""
    current = registry.by_alias(name, CHAMPION)
    if current is None:
        return None
    try:
        return Champion(current.version, registry.metric(current.run_id, metric))
    except MissingRecordError as err:
        return Champion(current.version, None, str(err))


def register_and_gate(
    tracking_uri: str, name: str, model_uri: str, run_id: str, metric: str = GATE_METRIC
) -> Registration:
    """Register `model_uri` as a new version of `name`, then move `champion` or `challenger`."""
    registry = MLflowRegistry(tracking_uri)
    try:
        score = registry.metric(run_id, metric)
    except MissingRecordError as err:
        raise RegistryError(
            f"cannot register {model_uri} as {name}: {err}; evaluate run {run_id} first"
        ) from err
    champion = read_champion(registry, name, metric)
    version = registry.create_version(name, model_uri, run_id, DESCRIPTION)
    alias, reason = gate(score, champion, metric)
    registry.set_alias(name, alias, version)
    champion_score = champion.score if champion else None
    registry.set_version_tags(
        name, version, {"gate": f"{metric}={score:.4f} vs {champion_score}", "gate_reason": reason}
    )
    blocked = champion is not None and champion.score is None
    (log.warning if blocked else log.info)(
        "registered %s v%s as %s: %s", name, version, alias, reason
    )
    previous = champion.version if champion else None
    return Registration(name, version, alias, score, champion_score, previous, reason)
