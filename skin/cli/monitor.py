"""Monitoring commands: drift of new data against the data the champion was trained on."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from skin.cli.command import command, run_flow
from skin.cli.options import LAYOUT, ConfigOpt, DataOpt, flag
from skin.cli.output import frame_table, show

app = typer.Typer()

DRIFT_FLAGS = (
    flag("drift.current", str, "--current", "new (images the reference lacks) or all."),
    flag("drift.sample", int, "--sample", "Images per side for properties and embeddings."),
    flag("drift.alpha", float, "--alpha", "Family-wise false-alarm rate."),
    flag("drift.embeddings", bool, "--embeddings/--no-embeddings", "Compare backbone embeddings."),
    flag("drift.permutations", int, "--permutations", "Permutations for the embedding p-value."),
    LAYOUT,
)


@command(app, "drift", *DRIFT_FLAGS)
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
    from skin.track.refs import parse_model_ref

    if against:  # a malformed reference fails here, before Prefect starts
        parse_model_ref(against)
    result = run_flow(check_drift_flow, config, overrides, data_uri=data, against=against)
    checks = pd.DataFrame(result.checks)
    show(
        result,
        frame_table(checks.set_index("check"), f"drift of {data}") if len(checks) else None,
        f"[bold]{result.verdict}[/]",
        f"MLflow: {result.mlflow_url}" if result.mlflow_url else None,
    )
    if fail_on_drift and result.drifted:
        raise typer.Exit(3)
