"""Data commands: generate sample data, list, validate, audit, split into a manifest, and decode
a manifest's images into shared shards."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from skin.cli.command import check_settings, command, run_flow
from skin.cli.options import (
    AUDIT_FLAGS,
    IMAGE_SIZE,
    LAYOUT,
    MODEL,
    SHARD_ROWS,
    SPLIT_FLAGS,
    ConfigOpt,
    DataOpt,
    LatestDataOpt,
    ManifestOpt,
)
from skin.cli.output import count_table, emit, frame_table, progress, reasons, show

app = typer.Typer()


@command(app, "sample-data")
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
    from skin.data.sample_data import write_sample_dataset
    from skin.data.synthetic import class_counts

    if per_class is None and total is None:
        per_class = 50
    counts = class_counts(per_class=per_class, total=total)
    with progress() as bar:
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
    show(
        {"dest": dest, "images": len(written), "counts": counts},
        None,
        f"wrote {len(written)} images to {dest} ({layout} layout)",
    )


@command(app, "list", LAYOUT)
def list_cmd(data: DataOpt, config: ConfigOpt = None, *, overrides: dict[str, Any]) -> None:
    """Count images per class and report everything skipped (the list stage).

    Example: skin list --data s3://my-bucket/isic2019
    """
    from flows.stages import list_flow

    ref = run_flow(list_flow, config, overrides, data_uri=data)
    counts, skips = ref.counts, ref.skipped
    table = count_table(f"{data} ({ref.layout} layout)", "class", counts)
    table.add_row("total", str(sum(counts.values())), style="bold")
    skipped = f"[yellow]skipped {sum(skips.values())}:[/] {reasons(skips)}" if skips else None
    show(ref, table, skipped)


@command(app, "validate")
def validate_cmd(
    data: DataOpt,
    layout: Annotated[str, typer.Option(help="auto, folders or isic.")] = "auto",
    report: Annotated[
        str | None, typer.Option(help="Also write every problem to this CSV.")
    ] = None,
) -> None:
    """Check every object without training: what is skipped and what cannot be decoded, and why.

    Exit code 0 even with problems (they are skipped by the pipeline); 1 only if nothing is usable.
    Example: skin validate --data s3://my-bucket/isic2019 --report problems.csv
    """
    from skin.base.config import DataConfig
    from skin.data.validate import validate_dataset

    cfg = DataConfig(uri=data, layout=layout)  # type: ignore[arg-type]
    with progress() as bar:
        task = bar.add_task("checking images", total=None)
        result = validate_dataset(cfg, progress=lambda n: bar.advance(task, n))
    if report:
        result.problems.to_csv(report, index=False)
    table = Table(title=f"{data}: {int(result.good.sum())} usable images ({result.layout} layout)")
    for col in ("stage", "reason", "count"):
        table.add_column(col, justify="right" if col == "count" else "left")
    for row in result.summary().itertuples(index=False):
        table.add_row(str(row.stage), str(row.reason), str(row.count))
    problems = result.problems.to_dict(orient="records")
    emit({"layout": result.layout, "good": result.good.to_dict(), "problems": problems}, table)
    if result.good.sum() == 0:
        raise typer.Exit(1)


@command(app, "split", *SPLIT_FLAGS)
def split_cmd(
    data: DataOpt,
    out: Annotated[str, typer.Option("--out", help="Manifest to write (.parquet or .csv).")],
    previous: Annotated[
        str | None, typer.Option(help="Earlier manifest: its images keep their split.")
    ] = None,
    config: ConfigOpt = None,
    *,
    overrides: dict[str, Any],
) -> None:
    """List, split 80/10/10 per class and undersample train; write the manifest.

    Settings not given as flags come from --config (else 80/10/10, seed 42, undersample).
    Example: skin split --data demo/data --out manifest.parquet --previous old.parquet
    """
    from flows.stages import split_flow
    from skin.data import manifest as mf

    result = run_flow(split_flow, config, overrides, data_uri=data, previous=previous)
    df = mf.read(result.manifest.uri)
    digest = mf.write(df, out)
    summary = mf.summary(df).rename(
        columns={"train": "train (before)", "train_kept": "train (after)"}
    )
    skipped = result.listing.skipped
    show(
        {
            "manifest": out,
            "hash": digest,
            "counts": summary.to_dict(orient="index"),
            "skipped": skipped,
            "stored_as": result.manifest.uri,
        },
        frame_table(summary, f"manifest {out} · version {digest}"),
        f"[yellow]skipped:[/] {reasons(skipped)}" if skipped else None,
    )


@command(app, "audit", LAYOUT, *AUDIT_FLAGS)
def audit_cmd(
    data: DataOpt,
    manifest: Annotated[
        str | None,
        typer.Option(help="Manifest URI or 'latest': report the copies that straddle its splits."),
    ] = None,
    run_id: Annotated[
        str | None,
        typer.Option("--run-id", help="With --manifest: that run's test metrics without leaks."),
    ] = None,
    cv_run: Annotated[
        str | None,
        typer.Option("--cv-run", help="A `skin cv` parent run: rank its suspect labels."),
    ] = None,
    config: ConfigOpt = None,
    refresh: Annotated[
        bool, typer.Option("--refresh", help="Audit again, ignore the cache.")
    ] = False,
    *,
    overrides: dict[str, Any],
) -> None:
    """Find near-duplicates, unusable images and (with --cv-run) suspect labels; reads only.

    Example: skin audit --data s3://isic/2019 --manifest latest --run-id RUN --cv-run CVRUN
    """
    from flows.audit import audit_flow

    if run_id and not manifest:
        raise typer.BadParameter("--run-id needs --manifest (the manifest the run was split by)")
    result = run_flow(
        audit_flow,
        config,
        overrides,
        data_uri=data,
        manifest=manifest,
        run_id=run_id,
        cv_run=cv_run,
        refresh=refresh,
    )
    audit = result["audit"]
    lines = [
        f"audited {audit['images']} images: {audit['pairs']} near-duplicate pairs in"
        f" {audit['clusters']} clusters, {audit['unusable']} unusable; findings in {audit['uri']}"
    ]
    if result["leaks"]:
        leaks = result["leaks"]
        lines.append(
            f"{leaks['pairs']} pairs straddle the manifest's splits (would have leaked);"
            f" {leaks['test_images_leaked']} test images have a copy elsewhere"
        )
        for metric, row in (leaks["effect"] or {}).items():
            lines.append(
                f"  test {metric}: {row['all']:.4f} -> {row['without_leaks']:.4f} without them"
            )
    if result["suspects"]:
        s = result["suspects"]
        lines.append(f"{s['suspects']} suspect labels: {s['label_issues_uri']}, {s['sheet_uri']}")
    show(result, None, *lines)


@command(app, "prepare", MODEL, IMAGE_SIZE, SHARD_ROWS)
def prepare_cmd(
    shared: Annotated[str, typer.Option("--shared", help="s3:// prefix for the image shards.")],
    data: LatestDataOpt = None,
    manifest: ManifestOpt = "latest",
    config: ConfigOpt = None,
    dask: Annotated[
        str | None,
        typer.Option(
            help="Dask scheduler address (tcp://host:8786), or 'local' for a local cluster."
        ),
    ] = None,
    dask_workers: Annotated[int, typer.Option(help="Workers of a local Dask cluster.")] = 2,
    *,
    overrides: dict[str, Any],
) -> None:
    """Decode a manifest's images once into shared shards, fanned out over threads or Dask.

    Example: skin prepare --data s3://isic/2019 --shared s3://team/skin --dask tcp://sched:8786
    """
    from flows.prepare import build_shards_flow, build_shards_flow_on_dask

    overrides = {"shared.uri": shared, **overrides}
    check_settings(config, overrides, data)  # before a Dask runner is made
    flow = build_shards_flow
    if dask is not None:
        flow = build_shards_flow_on_dask(None if dask == "local" else dask, dask_workers)
    result = flow(manifest=manifest, data_uri=data, config_path=config, overrides=overrides)
    show(
        result,
        None,
        f"{result.shards} shards at {result.uri}: {result.built} built,"
        f" {result.reused} already there; {result.bad} unreadable images",
    )
