"""Commands that set up the shared Prefect server: task results in S3, webhook notifications."""

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
