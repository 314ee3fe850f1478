"""Commands that set up the Prefect server: a local one every command reuses, task results in
S3, webhook notifications."""

from __future__ import annotations

from typing import Annotated

import typer

from skin.cli.command import command
from skin.cli.output import show

app = typer.Typer()
notify_app = typer.Typer(
    help="Webhook notifications: failed runs, new champions, drift.", no_args_is_help=True
)
app.add_typer(notify_app, name="notify")
server_app = typer.Typer(
    help="A local Prefect server that every later skin command reuses (no temporary server).",
    no_args_is_help=True,
)
app.add_typer(server_app, name="server")


@command(server_app, "start")
def server_start_cmd(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 4200,
) -> None:
    """Start a Prefect server on 127.0.0.1 once (in the background); later skin commands in this
    PREFECT_HOME use it instead of starting a temporary one each time. Safe to re-run.

    Example: skin server start · skin run --data demo/data · skin server stop
    """
    from flows.server import LOG, start_server

    server = start_server(port=port)
    show(
        {"api_url": server.api_url, "pid": server.pid, "prefect_home": server.home},
        None,
        f"Prefect server [bold]{server.api_url}[/] (pid {server.pid}); skin commands reuse it",
        f"log: {server.home}/{LOG} · UI: {server.api_url.removesuffix('/api')} · stop: skin server stop",
    )


@command(server_app, "stop")
def server_stop_cmd() -> None:
    """Stop the server `skin server start` started; commands go back to a temporary one."""
    from flows.server import stop_server

    server = stop_server()
    stopped = {"stopped": server is not None, "pid": server.pid if server else None}
    show(stopped, None, f"stopped pid {server.pid}" if server else "no server was recorded")


@command(server_app, "status")
def server_status_cmd() -> None:
    """Which Prefect API the next command uses: PREFECT_API_URL, the local server, or none."""
    import os

    from flows.server import running_server

    server, url = running_server(), os.environ.get("PREFECT_API_URL")
    where = url or (server.api_url if server else None)
    line = (
        f"Prefect API: [bold]{where}[/]"
        if where
        else "no server: each command starts a temporary one"
    )
    show({"api_url": where, "local_server": server is not None}, None, line)


@command(app, "result-storage")
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
    default = " (server default)" if set_default else ""
    show(
        {"block": slug, "uri": uri, "server_default": set_default},
        None,
        f"result storage block [bold]{slug}[/] → {uri}{default}",
    )


@command(notify_app, "setup")
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
    show(
        result.to_dict(),
        None,
        f"webhook block [bold]{result.to_dict()['block']}[/]; automations:",
        *(f"  {name}" for name in result.automations),
    )


@command(notify_app, "test")
def notify_test_cmd(
    message: Annotated[str, typer.Option(help="The body of the test post.")] = "skin notify test",
) -> None:
    """Emit a test event; the server's automation posts it to the webhook (check it arrives)."""
    from flows.automations import send_test

    send_test(message)
    show(
        {"event": "skin.notify.test", "message": message},
        None,
        "test event sent: the server posts it to the webhook within seconds",
    )
