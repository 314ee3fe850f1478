"""`python -m skin.cli`: the same app as the `skin` command."""

from skin.cli import app

app(prog_name="skin")
