"""Model registry with a promotion gate: `champion` moves only to a model that beats it on dev."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
GATE_METRIC = "dev_balanced_accuracy"


@dataclass(frozen=True)
class Registration:
    """What registering one run's model did to the registry."""

    name: str
    version: str
    alias: str
    score: float
    champion_score: float | None
    previous_champion: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(score: float, champion_score: float | None) -> str:
    """Strictly better than the champion (or no champion yet) wins; ties and regressions wait."""
    if champion_score is None or score > champion_score:
        return CHAMPION
    return CHALLENGER


def register_and_gate(
    tracking_uri: str, name: str, model_uri: str, run_id: str, metric: str = GATE_METRIC
) -> Registration:
    """Register `model_uri` as a new version of `name`, then move `champion` or `challenger`."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    score = client.get_run(run_id).data.metrics[metric]
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="ISIC 2019 skin-lesion classifier (skin)")
    version = mlflow.register_model(model_uri, name, tags={"run_id": run_id}).version
    champion_score: float | None = None
    previous: str | None = None
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
        previous = current.version
        if current.run_id:
            champion_score = client.get_run(current.run_id).data.metrics.get(metric)
    except MlflowException:
        pass
    alias = decide(score, champion_score)
    client.set_registered_model_alias(name, alias, version)
    client.set_model_version_tag(name, version, "gate", f"{metric}={score:.4f} vs {champion_score}")
    log.info(
        "registered %s v%s as %s (%s %.4f vs champion %s)",
        name,
        version,
        alias,
        metric,
        score,
        champion_score,
    )
    return Registration(name, str(version), alias, score, champion_score, previous)
