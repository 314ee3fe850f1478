"""The promotion gate: `champion` moves only to a model that beats it on dev.

Two policies (`registry.gate`): `paired` (default) scores both models on the challenger's dev
images and promotes when the interval of the difference clears `registry.min_improvement` and no
scored slice drops by more than `registry.max_slice_drop` with evidence of a drop (its
paired-bootstrap upper bound, Bonferroni-corrected over the slices scored, below 0); `point` compares the dev scores each
run recorded (possibly on different dev sets), and is the fallback, said so, when the champion
cannot be scored. The policies are pure; `register_and_gate` applies them through the tracking
seam (`skin.track.tracking.MLflowRegistry`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from skin.evaluate.compare import Comparison, NotComparableError, SliceDrop, promotion_markdown
from skin.track.refs import CHAMPION, VersionRef
from skin.track.tracking import CHECKPOINT_SHA_TAG, MissingRecordError, MLflowRegistry

log = logging.getLogger(__name__)

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
    checkpoint_sha: str | None = None  # of the weights the version pinned, where it did


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
    created: bool = True  # False: the champion's own weights again, no version was made

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


def paired_gate(
    comparison: Comparison, min_improvement: float = 0.0, max_slice_drop: float = 0.05
) -> tuple[str, str]:
    """(alias, reason) from both models on the same images: the lower bound of the difference
    must clear `min_improvement`, and no scored slice may drop by more than `max_slice_drop`
    with evidence of a drop (its upper bound, corrected for the slices scored, below 0)."""
    d = comparison.difference
    on = f"paired on {d.n} dev images vs champion v{comparison.champion_version}"
    blocking = comparison.blocking_slice(max_slice_drop)
    if blocking is not None:
        return CHALLENGER, f"{on}: {_slice_reason(blocking, comparison, max_slice_drop)}"
    bound, what = (d.low, "lower bound") if d.low == d.low else (d.difference, "difference")
    verdict = "clears" if bound > min_improvement else "does not clear"
    alias = CHAMPION if bound > min_improvement else CHALLENGER
    return alias, (
        f"{on}: difference {d.difference:+.4f} (95 % CI {d.low:+.4f} to {d.high:+.4f}); its"
        f" {what} {verdict} registry.min_improvement {min_improvement}; no slice of"
        f" {comparison.slices_scored} scored shows a drop beyond registry.max_slice_drop"
        f" {max_slice_drop}"
    )


def _slice_reason(s: SliceDrop, comparison: Comparison, max_slice_drop: float) -> str:
    """Why a slice blocks: its drop and the evidence for it."""
    head = (
        f"balanced accuracy on slice {s.dimension}/{s.value} (n={s.n}) falls {s.drop:.4f}"
        f" below the champion's, more than registry.max_slice_drop {max_slice_drop}"
    )
    if s.high != s.high:
        return f"{head} (point estimates: no bootstrap)"
    return (
        f"{head}: the upper one-sided {100 * s.level:.2f} % bound of its difference"
        f" ({comparison.slices_scored} slices scored, Bonferroni) is {s.high:+.4f}"
    )


def read_champion(registry: MLflowRegistry, name: str, metric: str) -> Champion | None:
    """The champion of `name`, with its score or the reason it cannot be read; None if none."""
    current = registry.by_alias(name, CHAMPION)
    if current is None:
        return None
    sha = current.tags.get(CHECKPOINT_SHA_TAG)
    try:
        return Champion(current.version, registry.metric(current.run_id, metric), None, sha)
    except MissingRecordError as err:
        return Champion(current.version, None, str(err), sha)


def same_as_champion(
    registry: MLflowRegistry,
    name: str,
    model_uri: str,
    run_id: str,
    score: float,
    champion: Champion | None,
) -> Registration | None:
    """The champion itself when `model_uri` carries its exact checkpoint (same sha256): a second
    version of it would be a challenger against itself, so none is made."""
    if champion is None or champion.checkpoint_sha is None:
        return None
    if registry.checkpoint_sha(model_uri) != champion.checkpoint_sha:
        return None
    reason = (
        f"identical to champion v{champion.version} (checkpoint sha256"
        f" {champion.checkpoint_sha[:12]}): no new version registered"
    )
    registry.log_text(run_id, promotion_markdown(None, CHAMPION, reason), "promotion.md")
    log.info("not registered %s again: %s", model_uri, reason)
    v = champion.version
    return Registration(name, v, CHAMPION, score, champion.score, v, reason, created=False)


@dataclass(frozen=True)
class GatePolicy:
    """How the gate decides: `paired` (scoring the champion with `compare`) or `point`."""

    policy: str = "point"
    min_improvement: float = 0.0
    max_slice_drop: float = 0.05
    # Scores the champion (`models:/NAME/VERSION`) on the challenger's dev images.
    compare: Callable[[VersionRef], Comparison] | None = None

    def evidence(self, name: str, champion: Champion | None) -> tuple[Comparison | None, str]:
        """The paired comparison, or why there is none (then the point rule decides, saying so)."""
        if champion is None or self.policy != "paired":
            return None, ""
        if self.compare is None:
            return None, "the challenger has no dev predictions to compare on"
        try:
            return self.compare(VersionRef(name, str(champion.version))), ""
        except NotComparableError as err:  # it trained on (nearly) all of the challenger's dev
            log.warning("champion v%s of %s cannot be compared: %s", champion.version, name, err)
            return None, f"champion v{champion.version} cannot be compared: {err}"
        except Exception as err:  # another class set, artefacts gone: reported, never hidden
            log.warning("champion v%s of %s cannot be scored: %s", champion.version, name, err)
            return None, f"champion v{champion.version} cannot be scored: {err}"

    def decide(
        self,
        score: float,
        champion: Champion | None,
        metric: str,
        comparison: Comparison | None,
        problem: str = "",
    ) -> tuple[str, str]:
        """(alias, reason): paired when it can be, else the point rule, saying why."""
        if comparison is not None:
            return paired_gate(comparison, self.min_improvement, self.max_slice_drop)
        alias, reason = gate(score, champion, metric)
        return alias, (
            f"paired gate impossible ({problem}); point gate: {reason}" if problem else reason
        )


def register_and_gate(
    tracking_uri: str,
    name: str,
    model_uri: str,
    run_id: str,
    metric: str = GATE_METRIC,
    policy: GatePolicy | None = None,
    card: Callable[[str], str] | None = None,
) -> Registration:
    """Register `model_uri` as a new version of `name`, then move `champion` or `challenger`;
    the evidence goes on the version's tags and into the run as `promotion.md`; `card(version)`,
    the model card, becomes the version's description and the run's `model_card.md`."""
    registry = MLflowRegistry(tracking_uri)
    try:
        score = registry.metric(run_id, metric)
    except MissingRecordError as err:
        raise RegistryError(
            f"cannot register {model_uri} as {name}: {err}; evaluate run {run_id} first"
        ) from err
    policy = policy or GatePolicy()
    champion = read_champion(registry, name, metric)
    if (same := same_as_champion(registry, name, model_uri, run_id, score, champion)) is not None:
        return same
    comparison, problem = policy.evidence(name, champion)
    version = registry.create_version(name, model_uri, run_id, DESCRIPTION)
    alias, reason = policy.decide(score, champion, metric, comparison, problem)
    registry.set_alias(name, alias, version)
    champion_score = champion.score if champion else None
    tags = {"gate": f"{metric}={score:.4f} vs {champion_score}", "gate_reason": reason}
    registry.set_version_tags(name, version, tags | (comparison.tags() if comparison else {}))
    registry.log_text(run_id, promotion_markdown(comparison, alias, reason), "promotion.md")
    if card is not None:
        text = card(version)
        registry.describe_version(name, version, text)
        registry.log_text(run_id, text, "model_card.md")
    blocked = champion is not None and alias == CHALLENGER
    (log.warning if blocked else log.info)(
        "registered %s v%s as %s: %s", name, version, alias, reason
    )
    previous = champion.version if champion else None
    return Registration(name, version, alias, score, champion_score, previous, reason)
