"""Serving commands: predict images (one by one, or a whole folder or prefix by the batch flow),
show where the model looked (class-activation maps), and export the network to ONNX."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from skin.cli.command import command
from skin.cli.options import EXPLAIN_FLAGS, ConfigOpt, ModelRefOpt, TrackingUriOpt
from skin.cli.output import count_table, show

if TYPE_CHECKING:
    from skin.track.refs import ModelRef

app = typer.Typer()

_ORDINAL = ("1st", "2nd", "3rd")


@command(app, "predict")
def predict_cmd(
    targets: Annotated[
        list[str],
        typer.Argument(
            metavar="IMAGE_OR_URI",
            help="Image files or s3:// image URIs; or one folder / s3:// prefix (batch flow).",
        ),
    ],
    model: ModelRefOpt = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Classes shown per image.")] = 3,
    tta: Annotated[
        bool, typer.Option("--tta/--no-tta", help="Average over flips and 90° rotations.")
    ] = False,
    out: Annotated[
        str | None,
        typer.Option(
            "--out",
            help="Write the table (.parquet/.csv; never overwrites). Batch default:"
            " <prefix>/predictions/predictions-<time>.parquet.",
        ),
    ] = None,
    tracking_uri: TrackingUriOpt = None,
    explain: Annotated[
        str | None,
        typer.Option(
            "--explain",
            metavar="DIR",
            help="Also write each image's class-activation map (<image>.cam.png) to DIR"
            " (image files, or a folder or prefix scored here rather than by the batch flow;"
            " settings: --config's explain section).",
        ),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Predict lesion classes for images, or for every image under a folder or s3:// prefix.

    Examples: skin predict lesion.jpg --top-k 3 · skin predict s3://bucket/incoming --tta
    """
    from skin.track.refs import DEFAULT_MODEL, parse_model_ref

    ref = parse_model_ref(model) if model else DEFAULT_MODEL
    if not any(_is_batch(t) for t in targets):
        _predict_images(targets, ref, top_k, tta, out, tracking_uri, explain, config)
        return
    if len(targets) > 1:
        raise typer.BadParameter("give one folder or s3:// prefix, or image files: not a mix")
    if explain:
        _explain_batch(targets[0], ref, tta, out, tracking_uri, explain, config)
        return
    _predict_batch(targets[0], ref, tta, out, tracking_uri)


def _is_batch(target: str) -> bool:
    """A folder or an s3:// prefix (not an image object) is predicted by the batch flow."""
    from pathlib import Path

    from skin.data.images import is_image_name

    if target.startswith("s3://"):
        return not is_image_name(target)
    return Path(target).is_dir()


def _predict_images(
    targets: list[str],
    model: ModelRef,
    k: int,
    tta: bool,
    out: str | None,
    tracking_uri: str | None,
    explain: str | None = None,
    config: str | None = None,
) -> None:
    """Score the images here (and map them into `explain`); exit 1 if any could not be read."""
    from skin.base.config import load_config
    from skin.data.storage import read_uri
    from skin.serve.loading import load_predictor
    from skin.serve.predict import check_output, write_frame

    if out:
        check_output(out)
    settings = load_config(config).explain if explain else None
    predictor = load_predictor(model, tta=tta, tracking_uri=tracking_uri)
    if settings is not None:
        frame = _explained(predictor, targets, explain, None, settings)
        frame = frame.drop(columns=["explained"])
    else:
        frame = predictor.score(targets, read_uri)
    if out:
        write_frame(frame, out)
    rows = _top_rows(frame, predictor, k)
    title = f"{predictor.source.resolved} (epoch {predictor.source.epoch}{', TTA' if tta else ''})"
    show(
        {"model": predictor.source.resolved, "tta": tta, "output": out, "predictions": rows},
        _predictions_table(rows, min(k, len(predictor.classes)), title),
        f"predictions written to {out}" if out else None,
        f"maps written to {explain}" if explain else None,
    )
    if any(r["error"] for r in rows):
        raise typer.Exit(1)


def _explained(
    predictor: Any, images: list[str], out: Any, target: str | None, settings: Any
) -> Any:
    """Each image's prediction row, its map written to `out` (skin.serve.explain)."""
    from pathlib import Path

    from skin.data.storage import read_uri
    from skin.serve.explain import write_explanations

    return write_explanations(
        predictor, images, read_uri, Path(out), target,
        method=settings.method, layer=settings.target_layer,
    )  # fmt: skip


@command(app, "explain", *EXPLAIN_FLAGS)
def explain_cmd(
    images: Annotated[
        list[str], typer.Argument(metavar="IMAGE", help="Image files or s3:// image URIs.")
    ],
    model: ModelRefOpt = None,
    target: Annotated[
        str | None,
        typer.Option("--class", help="Class to map, e.g. MEL (default: each image's answer)."),
    ] = None,
    out: Annotated[
        str, typer.Option("--out", help="Folder for <image>.cam.png (never overwrites).")
    ] = "explanations",
    tta: Annotated[
        bool, typer.Option("--tta/--no-tta", help="Predict and map over flips and rotations.")
    ] = False,
    config: ConfigOpt = None,
    tracking_uri: TrackingUriOpt = None,
    *,
    overrides: dict[str, Any],
) -> None:
    """Show where the model looked: per image, a PNG of the image, its class-activation map
    (Grad-CAM by default), the top three classes and the UNK answer where the model abstains.

    Example: skin explain lesion.jpg --model models:/skin-lesion-classifier@champion --class MEL
    """
    from skin.base.config import load_config
    from skin.serve.loading import load_predictor
    from skin.track.refs import DEFAULT_MODEL, parse_model_ref

    settings = load_config(config, overrides).explain
    ref = parse_model_ref(model) if model else DEFAULT_MODEL
    predictor = load_predictor(ref, tta=tta, tracking_uri=tracking_uri)
    frame = _explained(predictor, images, out, target, settings)
    rows = [
        {"image": r["key"], "explained": _text(r["explained"]), "file": _text(r["explanation_file"]),
         "answer": _text(r["predicted_label"]), "error": _text(r["error"])}
        for _, r in frame.iterrows()
    ]  # fmt: skip
    table = Table(title=f"{predictor.source.resolved} · {settings.method}")
    for column in ("image", "answer", "explained", "file"):
        table.add_column(column, overflow="fold")
    for row in rows:
        cells = (row["answer"], row["explained"], row["file"])
        table.add_row(row["image"], *([row["error"]] if row["error"] else cells))
    show({"model": predictor.source.resolved, "method": settings.method, "images": rows}, table)
    if any(r["error"] for r in rows):
        raise typer.Exit(1)


def _text(value: Any) -> str | None:
    """A table cell as a string, or None for pandas' missing values."""
    return value if isinstance(value, str) else None


def _predict_batch(
    source: str, model: ModelRef, tta: bool, out: str | None, tracking_uri: str | None
) -> None:
    """Every image under `source`, by the batch flow: counts per predicted class."""
    from flows.predict import predict_flow

    # A flow parameter is a string (deployments pass strings): the flow parses it again.
    result = predict_flow(
        source=source, model=str(model), out=out, tta=tta, tracking_uri=tracking_uri
    )
    title = f"{result.images} images under {source} · {result.model}"
    table = count_table(title, "predicted", dict(sorted(result.counts.items())))
    if result.errors:
        table.add_row("[red]undecodable[/]", str(result.errors))
    show(result, table, f"predictions: [bold]{result.output}[/]")


def _explain_batch(
    source: str,
    model: ModelRef,
    tta: bool,
    out: str | None,
    tracking_uri: str | None,
    explain: str,
    config: str | None,
) -> None:
    """Every image under `source`, each with its map in `explain`: scored in this process (one
    map per image, so meant for a review-sized folder), the table where the batch flow puts it."""
    from pathlib import Path

    from skin.base.config import load_config
    from skin.serve.explain import explain_store
    from skin.serve.loading import load_predictor

    settings = load_config(config).explain
    predictor = load_predictor(model, tta=tta, tracking_uri=tracking_uri)
    frame, output = explain_store(
        source, predictor, Path(explain), out, method=settings.method, layer=settings.target_layer
    )
    errors = int(frame["error"].map(lambda e: isinstance(e, str)).sum())
    counts = frame.loc[frame["error"].isna(), "predicted_label"].value_counts().to_dict()
    title = f"{len(frame)} images under {source} · {predictor.source.resolved}"
    table = count_table(title, "predicted", dict(sorted(counts.items())))
    if errors:
        table.add_row("[red]undecodable[/]", str(errors))
    summary = {"images": len(frame), "model": predictor.source.resolved, "output": output,
               "explanations": explain, "counts": counts, "errors": errors}  # fmt: skip
    show(summary, table, f"predictions: [bold]{output}[/]", f"maps written to {explain}")


def _top_rows(frame: Any, predictor: Any, k: int) -> list[dict[str, Any]]:
    """Per image: its top-k classes with probabilities, or its error; with an abstention rule
    also its answer (UNK past the threshold) and OOD score."""
    probs = frame[[f"prob_{c}" for c in predictor.classes]].to_numpy()
    rows = []
    for (_, row), best in zip(frame.iterrows(), predictor.top_k(probs, k), strict=True):
        error = row["error"] if isinstance(row["error"], str) else None
        top = [] if error else [{"label": c, "probability": p} for c, p in best]
        out = {"image": row["key"], "top_k": top, "error": error}
        if "explanation_file" in frame.columns:  # skin predict --explain
            out["explanation"] = _text(row["explanation_file"])
        if "ood_score" in frame.columns:
            ok = error is None
            out |= {"answer": row["predicted_label"] if ok else None,
                    "ood_score": float(row["ood_score"]) if ok else None}  # fmt: skip
        rows.append(out)
    return rows


def _predictions_table(rows: list[dict[str, Any]], k: int, title: str) -> Table:
    """One row per image: its answer (when the model abstains) and its top-k classes."""
    from rich.text import Text

    table = Table(title=title)
    table.add_column("image", style="bold", overflow="fold")
    answers = any("answer" in row for row in rows)  # the model abstains: UNK or a class
    if answers:
        table.add_column("answer")
    for i in range(k):
        table.add_column(_ORDINAL[i] if i < len(_ORDINAL) else f"{i + 1}th", justify="right")
    for row in rows:
        if row["error"]:
            table.add_row(row["image"], Text(row["error"], style="red", justify="left"))
            continue
        cells = [f"{t['label']} {t['probability']:.3f}" for t in row["top_k"]]
        if answers:
            cells.insert(0, f"{row['answer']} (ood {row['ood_score']:.3f})")
        table.add_row(row["image"], *cells)
    return table


@command(app, "export")
def export_cmd(
    out: Annotated[str, typer.Argument(metavar="OUT", help="The file to write (.onnx).")],
    model: ModelRefOpt = None,
    fmt: Annotated[str, typer.Option("--format", help="Only onnx.")] = "onnx",
    tracking_uri: TrackingUriOpt = None,
) -> None:
    """Export the model's network to ONNX: logits from normalised input, any batch size, the
    preprocessing constants and class order in the graph's metadata.

    Example: skin export --model models:/skin-lesion-classifier@champion --format onnx model.onnx
    """
    from pathlib import Path

    from skin.serve.export import export_onnx
    from skin.serve.loading import load_predictor
    from skin.track.refs import DEFAULT_MODEL, parse_model_ref

    if fmt.lower() != "onnx":
        raise typer.BadParameter(f"format {fmt!r}: only onnx is supported", param_hint="--format")
    ref = parse_model_ref(model) if model else DEFAULT_MODEL
    predictor = load_predictor(ref, "cpu", tracking_uri=tracking_uri)
    path = export_onnx(predictor, Path(out))
    show(
        {"model": predictor.source.resolved, "format": "onnx", "output": str(path)},
        None,
        f"{predictor.source.resolved} (epoch {predictor.source.epoch}) → [bold]{path}[/]",
    )
