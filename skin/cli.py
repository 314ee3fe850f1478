"""The `skin` command line: one Typer app over the same functions the flows use."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from functools import wraps
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

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
    level = logging.DEBUG if debug else logging.WARNING if quiet or json_out else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("botocore", "urllib3", "httpx", "s3transfer", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


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


def emit(data: Any, table: Table | None = None) -> None:
    """Print JSON in --json mode, else the rich table (nothing with --quiet)."""
    if _state["json"]:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    elif not _state["quiet"] and table is not None:
        console.print(table)


def info(message: str) -> None:
    if not (_state["json"] or _state["quiet"]):
        console.print(message, highlight=False)


def _frame_table(df: Any, title: str) -> Table:
    table = Table(title=title)
    table.add_column(df.index.name or "", style="bold")
    for col in df.columns:
        table.add_column(str(col), justify="right")
    for idx, row in df.iterrows():
        table.add_row(str(idx), *(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row))
    return table


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


# --------------------------------------------------------------------------- data stages


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
    from rich.progress import Progress

    from skin.sample_data import write_sample_dataset
    from skin.synthetic import class_counts

    if per_class is None and total is None:
        per_class = 50
    counts = class_counts(per_class=per_class, total=total)
    with Progress(console=err_console, disable=_state["quiet"] or _state["json"]) as bar:
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


@app.command("list")
@friendly_errors
def list_cmd(
    data: Annotated[str, typer.Option("--data", help="s3://bucket/prefix or a folder.")],
    layout: Annotated[str, typer.Option(help="auto, folders or isic.")] = "auto",
) -> None:
    """Count images per class and report everything skipped.

    Example: skin list --data s3://my-bucket/isic2019
    """
    from skin.config import DataConfig
    from skin.datastages import list_images

    listing = list_images(DataConfig(uri=data, layout=layout))  # type: ignore[arg-type]
    counts = listing.counts()
    skips = listing.skip_counts()
    table = Table(title=f"{data} ({listing.layout} layout)")
    table.add_column("class", style="bold")
    table.add_column("images", justify="right")
    for label, n in counts.items():
        table.add_row(str(label), str(n))
    table.add_row("total", str(int(counts.sum())), style="bold")
    emit(
        {
            "layout": listing.layout,
            "counts": counts.to_dict(),
            "skipped": skips.to_dict(),
            "fingerprint": listing.fingerprint,
        },
        table,
    )
    if len(skips) and not _state["json"]:
        info(
            f"[yellow]skipped {int(skips.sum())}:[/] "
            + ", ".join(f"{r}: {n}" for r, n in skips.items())
        )


@app.command("split")
@friendly_errors
def split_cmd(
    data: Annotated[str, typer.Option("--data", help="s3://bucket/prefix or a folder.")],
    out: Annotated[str, typer.Option("--out", help="Manifest to write (.parquet or .csv).")],
    seed: Annotated[int, typer.Option(help="Split and undersampling seed.")] = 42,
    fractions: Annotated[str, typer.Option(help="train,dev,test fractions.")] = "0.8,0.1,0.1",
    balance: Annotated[str, typer.Option(help="undersample or none.")] = "undersample",
    previous: Annotated[
        str | None, typer.Option(help="Earlier manifest: its images keep their split.")
    ] = None,
    layout: Annotated[str, typer.Option(help="auto, folders or isic.")] = "auto",
    majority: Annotated[str | None, typer.Option(help="Class to undersample (default NV).")] = None,
) -> None:
    """List, split 80/10/10 per class and undersample train; write the manifest.

    Example: skin split --data demo/data --out manifest.parquet --previous old.parquet
    """
    from skin import manifest as mf
    from skin.config import load_config
    from skin.datastages import build_manifest, list_images, source_uri

    overrides: dict[str, Any] = {
        "data.uri": data,
        "data.layout": layout,
        "split.seed": seed,
        "split.fractions": _parse_fractions(fractions),
        "split.balance": balance,
    }
    if majority is not None:
        overrides["split.majority_class"] = majority
    cfg = load_config(None, overrides)
    listing = list_images(cfg.data)
    prev = mf.read(previous) if previous else None
    df = build_manifest(listing, source_uri(cfg.data.uri), cfg.split, prev)
    digest = mf.write(df, out)
    summary = mf.summary(df).rename(
        columns={"train": "train (before)", "train_kept": "train (after)"}
    )
    emit(
        {
            "manifest": out,
            "hash": digest,
            "counts": summary.to_dict(orient="index"),
            "skipped": listing.skip_counts().to_dict(),
        },
        _frame_table(summary, f"manifest {out} · version {digest}"),
    )


if __name__ == "__main__":  # pragma: no cover
    app()
