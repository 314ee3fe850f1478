"""Serving commands: predict images (one by one, or a whole folder or prefix by the batch flow)
and export the network to ONNX."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from skin.cli.command import command
from skin.cli.options import ModelRefOpt, TrackingUriOpt
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
) -> None:
    """Predict lesion classes for images, or for every image under a folder or s3:// prefix.

    Examples: skin predict lesion.jpg --top-k 3 · skin predict s3://bucket/incoming --tta
    """
    from skin.track.refs import DEFAULT_MODEL, parse_model_ref

    ref = parse_model_ref(model) if model else DEFAULT_MODEL
    if not any(_is_batch(t) for t in targets):
        _predict_images(targets, ref, top_k, tta, out, tracking_uri)
        return
    if len(targets) > 1:
        raise typer.BadParameter("give one folder or s3:// prefix, or image files: not a mix")
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
) -> None:
    """Score the images here; exit 1 if any could not be read or decoded."""
    from skin.data.storage import read_uri
    from skin.serve.loading import load_predictor
    from skin.serve.predict import check_output, write_frame

    if out:
        check_output(out)
    predictor = load_predictor(model, tta=tta, tracking_uri=tracking_uri)
    frame = predictor.score(targets, read_uri)
    if out:
        write_frame(frame, out)
    rows = _top_rows(frame, predictor, k)
    title = f"{predictor.source.resolved} (epoch {predictor.source.epoch}{', TTA' if tta else ''})"
    show(
        {"model": predictor.source.resolved, "tta": tta, "output": out, "predictions": rows},
        _predictions_table(rows, min(k, len(predictor.classes)), title),
        f"predictions written to {out}" if out else None,
    )
    if any(r["error"] for r in rows):
        raise typer.Exit(1)


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


def _top_rows(frame: Any, predictor: Any, k: int) -> list[dict[str, Any]]:
    """Per image: its top-k classes with probabilities, or its error; with an abstention rule
    also its answer (UNK past the threshold) and OOD score."""
    probs = frame[[f"prob_{c}" for c in predictor.classes]].to_numpy()
    rows = []
    for (_, row), best in zip(frame.iterrows(), predictor.top_k(probs, k), strict=True):
        error = row["error"] if isinstance(row["error"], str) else None
        top = [] if error else [{"label": c, "probability": p} for c, p in best]
        out = {"image": row["key"], "top_k": top, "error": error}
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
