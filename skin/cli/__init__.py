"""The `skin` command line: one Typer app over the same functions the flows use.

May import: every floor of skin, and the flows (each command imports its flow when it runs, so
`skin --help` starts fast). One module per command group, each named for what its commands do:

    data       sample-data, list, validate, split, prepare
    pipeline   run, demo, and the train and evaluate stages alone
    search     cv, ensemble, sweep
    monitor    drift
    serve      predict, export
    server     result-storage, notify (the shared Prefect server's setup)

and the parts they share: `options` (each option and config flag declared once), `command` (the
frame of every command: flags, settings checked, errors as one line and an exit code), `output`
(JSON, tables and lines), `main` (the app, its global options, the groups registered).
"""

from skin.cli.main import app

__all__ = ["app"]
