"""`python -m skin.cli`: the same app as the `skin` command."""

from skin.cli import app

if __name__ == "__main__":  # not when a tool imports every module (tests walk the package)
    app(prog_name="skin")
