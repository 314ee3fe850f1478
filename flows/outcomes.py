"""What each flow returns: one dataclass per flow, read by attribute (`result.run_id`).

Compatibility: flows returned plain dicts before, and scripts read them by key. Every result is
also a read-only mapping with exactly those keys (`result["run_id"]`, `result.get(...)`,
`dict(result)`, `result.to_dict()`); a key that was absent before (e.g. `holdout` outside a
held-out-class run) is absent here too. Prefect persists and returns these as it does any
picklable value (its default result serializer is cloudpickle).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, ClassVar

from skin.data.stages import ListingRef, ManifestRef
from skin.evaluate.outcome import EvalOutcome
from skin.monitor.drift import Reference
from skin.release.registry import Registration
from skin.search.folds import CVOutcome
from skin.train.outcome import TrainOutcome


def plain(value: Any) -> Any:
    """`value` as the JSON-able dict/list/scalar the flows returned before."""
    if hasattr(value, "to_dict") and (is_dataclass(value) or isinstance(value, FlowResult)):
        return value.to_dict()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


class FlowResult(Mapping[str, Any]):
    """Read by key as the dict a flow returned before (kept for compatibility with scripts);
    first among a result's bases, so its `to_dict` is the one used."""

    _optional: ClassVar[tuple[str, ...]] = ()  # keys left out when None, as they were before

    def to_dict(self) -> dict[str, Any]:
        """The dict this flow returned before this type existed: same keys, plain values."""
        return {
            f.name: plain(getattr(self, f.name))
            for f in fields(self)  # type: ignore[arg-type]
            if not (f.name in self._optional and getattr(self, f.name) is None)
        }

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


@dataclass(frozen=True)
class ListResult(FlowResult, ListingRef):
    """skin-list: the saved listing (counts per class, skipped objects, fingerprint)."""


@dataclass(frozen=True)
class SplitResult(FlowResult):
    """skin-split: the manifest (now the dataset's latest), the listing it came from, stages."""

    manifest: ManifestRef
    listing: ListingRef
    stages: dict[str, str]


@dataclass
class TrainResult(FlowResult, TrainOutcome):
    """skin-train: the training outcome, the manifest it trained on, and which stages ran."""

    manifest_uri: str = ""
    stages: dict[str, str] = field(default_factory=dict)


@dataclass
class EvaluateResult(FlowResult, EvalOutcome):
    """skin-evaluate: the evaluation outcome and which stages ran."""

    stages: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ShardsResult(FlowResult):
    """skin-prepare: the shard set's location and what was built, reused or unreadable."""

    uri: str
    shards: int
    built: int
    reused: int
    bad: int
    count: int


@dataclass(frozen=True)
class PredictResult(FlowResult):
    """skin-predict: where the table went, which model scored it, and the counts."""

    source: str
    output: str
    model: str
    model_ref: str
    run_id: str | None
    epoch: int | None
    tta: bool
    images: int
    predicted: int
    errors: int
    abstains: bool
    abstained: int
    counts: dict[str, int]


@dataclass(frozen=True)
class DriftResult(FlowResult):
    """skin-check-drift: the verdict, every check, the report and its MLflow run."""

    reference: Reference
    current: str
    n_reference: int
    n_current: int
    alpha: float
    note: str
    unit: str
    groups_reference: int
    groups_current: int
    unit_note: str
    drifted: bool
    verdict: str
    checks: list[dict[str, Any]]
    markdown: str
    mlflow_run_id: str
    mlflow_url: str | None
    files: dict[str, str]
    stages: dict[str, str]

    @classmethod
    def of(
        cls, checked: Mapping[str, Any], reference: Reference, stages: dict[str, str]
    ) -> DriftResult:
        """From the check-drift task's record (whose `reference` is only the label)."""
        return cls(**{**checked, "reference": reference, "stages": stages})


@dataclass(frozen=True)
class PipelineResult(FlowResult):
    """skin-pipeline when it retrained: the run, its evaluation, registration and stages."""

    _optional: ClassVar[tuple[str, ...]] = ("holdout", "drift")

    run_id: str
    skipped: dict[str, int]
    bad_images: int
    registration: Registration | None
    mlflow_url: str | None
    manifest_uri: str
    manifest_hash: str
    best_epoch: int
    metrics: dict[str, float]
    diagnosis: str
    report_dir: str
    stages: dict[str, str]
    retrained: bool
    reason: str
    holdout: dict[str, Any] | None = None  # the held-out class, in a held-out-class run
    drift: dict[str, Any] | None = None  # check-drift's result, when it ran


@dataclass(frozen=True)
class NotRetrained(FlowResult):
    """skin-pipeline when `retrain.when` stopped it after the data stages: why."""

    retrained: bool
    reason: str
    policy: str
    run_id: None
    skipped: dict[str, int]
    manifest_uri: str
    manifest_hash: str
    drift: dict[str, Any] | None
    stages: dict[str, str]


@dataclass
class EnsembleResult(FlowResult, EvalOutcome):
    """skin-ensemble: the ensemble run's evaluation, its members, and its registration if gated."""

    _optional: ClassVar[tuple[str, ...]] = ("registration",)

    members: list[str] = field(default_factory=list)
    registration: Registration | None = None


@dataclass
class CVResult(FlowResult, CVOutcome):
    """skin-cv: the cross-validation, which stages ran, and the fold ensemble if asked for."""

    _optional: ClassVar[tuple[str, ...]] = ("ensemble",)

    stages: dict[str, str] = field(default_factory=dict)
    ensemble: EnsembleResult | None = None


@dataclass(frozen=True)
class SweepResult(FlowResult):
    """skin-sweep: the study, its trials (best first), the best trial and its registration."""

    name: str
    storage: str
    parent_run_id: str
    manifest_hash: str
    images: int
    ran: list[dict[str, Any]]
    errors: list[str]
    trials: list[dict[str, Any]]
    best: dict[str, Any] | None
    registration: Registration | None
    stages: dict[str, str]
    data_seconds: float
    seconds: float
