"""Model commands: the whole pipeline (`run`, and `demo` on generated data), and its train and
evaluate stages alone."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from skin.cli.command import check_settings, command, run_flow
from skin.cli.options import (
    HOLDOUT,
    MODEL_FLAGS,
    RETRAIN_WHEN,
    TTA,
    ConfigOpt,
    LatestDataOpt,
    ManifestOpt,
    OptionalDataOpt,
    RefreshOpt,
)
from skin.cli.output import info, metrics_table, registration_line, show

if TYPE_CHECKING:
    from flows.outcomes import NotRetrained, PipelineResult

app = typer.Typer()


@command(app, "train", *MODEL_FLAGS)
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

    result = run_flow(
        train_flow, config, overrides, manifest=manifest, data_uri=data, run_id=run_id
    )
    show(
        result,
        None,
        f"run [bold]{result.run_id}[/]: best epoch {result.best_epoch} of"
        f" {result.last_epoch}, checkpoint {result.best_checkpoint}",
    )


@command(app, "evaluate", TTA)
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

    # No check here: the run's own saved config is the base, which the flow reads first.
    result = evaluate_flow(
        run_id=run_id,
        manifest=manifest,
        checkpoint=checkpoint,
        config_path=config,
        overrides=overrides,
    )
    show(
        result,
        metrics_table(result.metrics, f"run {run_id}"),
        f"reading: [bold]{result.diagnosis}[/]; reports in {result.report_dir}",
    )


@command(app, "run", *MODEL_FLAGS, HOLDOUT, RETRAIN_WHEN)
def run_cmd(
    data: OptionalDataOpt = None,
    config: ConfigOpt = None,
    refresh: RefreshOpt = False,
    *,
    overrides: dict[str, Any],
) -> None:
    """The whole pipeline: list → split → undersample → train → evaluate (incremental).

    Example: skin run --data s3://my-bucket/isic2019 --config configs/notebook.yaml
    """
    from flows.pipeline import pipeline_flow

    report_run(run_flow(pipeline_flow, config, overrides, data_uri=data, refresh=refresh))


@command(app, "demo")
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

    cfg = check_settings(config, {}, dest)
    if not Path(dest).exists():
        info(f"writing sample data to {dest}")
        write_sample_dataset(dest, class_counts(per_class=60), size=96, seed=0)
    report_run(pipeline_flow(data_uri=dest, config_path=config))
    info(mlflow_hint(resolve_tracking_uri(cfg.tracking.tracking_uri)))


def report_run(result: PipelineResult | NotRetrained) -> None:
    """A pipeline run: its metrics, stages, reading and where to look; or why it did not train."""
    if not result.retrained:  # retrain.when stopped before the model stages
        show(result, None, f"[bold]not retrained[/] ({result.policy}): {result.reason}")
        return
    stages = ", ".join(f"{k} {v}" for k, v in result.stages.items())
    show(
        result,
        metrics_table(result.metrics, f"run {result.run_id}"),
        f"run [bold]{result.run_id}[/] · stages: {stages}",
        f"reading: [bold]{result.diagnosis}[/]",
        registration_line(result.registration),
        f"reports: {result.report_dir}",
        f"MLflow: {result.mlflow_url}" if result.mlflow_url else None,
    )


def mlflow_hint(uri: str) -> str:
    """How to look at the runs: open the server, or start a UI over the local store."""
    if uri.startswith(("http://", "https://")):
        return f"\nsee it in MLflow: [bold]{uri}[/]"
    return (
        f"\nsee it in MLflow: [bold].venv/bin/mlflow ui --backend-store-uri {uri}[/]"
        " then open http://127.0.0.1:5000"
    )
