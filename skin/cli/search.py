"""Search commands: cross-validation, ensembles of trained models, and hyperparameter sweeps."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from skin.cli.command import command, run_flow
from skin.cli.options import MODEL_FLAGS, TTA, ConfigOpt, OptionalDataOpt, RefreshOpt
from skin.cli.output import frame_table, notes, registration_line, show

if TYPE_CHECKING:
    from flows.outcomes import CVResult, EnsembleResult

app = typer.Typer()


@command(app, "cv", *MODEL_FLAGS)
def cv_cmd(
    data: OptionalDataOpt = None,
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
    refresh: RefreshOpt = False,
    *,
    overrides: dict[str, Any],
) -> None:
    """Cross-validate: lesion-grouped folds over train (dev, test held out), a model per fold,
    per-fold and pooled out-of-fold metrics in one parent MLflow run.

    Example: skin cv --data demo/data --config configs/demo.yaml --folds 5 --ensemble
    """
    from flows.cv import cv_flow

    result = run_flow(
        cv_flow,
        config,
        overrides,
        data_uri=data,
        folds=folds,
        refresh=refresh,
        ensemble=ensemble,
        register_model=register,
    )
    show(result, _folds_table(result, folds))
    if result.ensemble is not None:
        _ensemble_lines(result.ensemble)


def _folds_table(result: CVResult, folds: int) -> Table:
    """Per fold its dev metrics, then each metric's mean ± std and pooled out-of-fold value."""
    table = Table(title=f"{folds}-fold cross-validation · parent run {result.parent_run_id}")
    for column in ("fold", "run", "dev balanced acc.", "dev acc.", "dev macro AUC"):
        table.add_column(column, justify="right")
    for f in result.folds:
        cells = [
            f.get(f"dev_{m}", float("nan")) for m in ("balanced_accuracy", "accuracy", "macro_auc")
        ]
        table.add_row(str(f["fold"]), f["run_id"], *(f"{c:.4f}" for c in cells))
    m = result.metrics
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
    return table


@command(app, "ensemble", TTA)
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
    from skin.evaluate.report import metrics_table_text
    from skin.track.refs import parse_model_ref

    if bool(runs) == bool(cv_run):
        raise typer.BadParameter("give --runs or --cv-run (one of them)")
    members = [r.strip() for r in runs.split(",") if r.strip()] if runs else None
    for member in members or []:  # a malformed reference fails here, before Prefect starts
        parse_model_ref(member)
    result = run_flow(
        ensemble_flow,
        config,
        overrides,
        runs=members,
        cv_run=cv_run,
        manifest=manifest,
        register_model=register,
    )
    title = f"ensemble run {result.run_id} [95 % bootstrap interval over lesions]"
    show(result, frame_table(metrics_table_text(result.metrics).drop(index="train"), title))
    _ensemble_lines(result)


def _ensemble_lines(result: EnsembleResult) -> None:
    """Where the ensemble went: its run, the registry's verdict, its model URI."""
    notes(
        f"ensemble of {len(result.members)} models: run [bold]{result.run_id}[/]",
        registration_line(result.registration),
        f"model: {result.model_uri}" if result.model_uri else None,
    )


@command(app, "sweep", *MODEL_FLAGS)
def sweep_cmd(
    data: OptionalDataOpt = None,
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
    import pandas as pd

    from flows.sweep import sweep_flow

    result = run_flow(
        sweep_flow,
        config,
        overrides,
        space_path=space,
        trials=trials,
        name=name,
        data_uri=data,
        storage=storage,
        jobs=jobs,
        cv_folds=cv,
    )
    table = pd.DataFrame(result.trials).drop(columns=["retry_of"], errors="ignore")
    best = result.best
    show(
        result,
        frame_table(table.set_index("number"), f"sweep {result.name}: trials, best first"),
        f"best: trial {best['number']} = {best['value']:.4f} · run {best['run_id']}"
        if best
        else None,
        registration_line(result.registration),
        f"study {result.name} in {result.storage} · MLflow sweep run {result.parent_run_id}",
    )
