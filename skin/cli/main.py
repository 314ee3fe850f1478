"""The `skin` app: its global options (--debug, --json, --quiet) and the command groups, listed
in the order of the data's path."""

from __future__ import annotations

import logging
import os
from typing import Annotated

import typer

from skin.cli import data, monitor, pipeline, search, serve, server
from skin.cli.output import state

app = typer.Typer(
    name="skin",
    help="Train and evaluate skin-lesion classifiers (ISIC 2019) as a tracked pipeline.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Each group's commands become the app's own (`skin list`, not `skin data list`), shown in --help
# under the group's heading.
GROUPS = {
    "Data": data.app,
    "Models": pipeline.app,
    "Search": search.app,
    "Monitoring": monitor.app,
    "Serving": serve.app,
    "Prefect server": server.app,
}
for panel, group in GROUPS.items():
    for info in [*group.registered_commands, *group.registered_groups]:
        info.rich_help_panel = panel
    app.registered_commands += group.registered_commands
    app.registered_groups += group.registered_groups


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors.")] = False,
) -> None:
    state.update(debug=debug, json=json_out, quiet=quiet)
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
