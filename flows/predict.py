"""The batch-prediction flow: every image under a folder or s3:// prefix → one predictions table."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from flows.outcomes import PredictResult
from skin.serve.loading import load_predictor
from skin.serve.predict import output_uri, predict_store
from skin.track.refs import DEFAULT_MODEL, ModelRef, parse_model_ref


@task(name="predict-images")
def predict_task(
    source: str, model: ModelRef, out: str, tta: bool, tracking_uri: str | None
) -> PredictResult:
    """Load the model, score every image under `source`, write the table to `out`."""
    predictor = load_predictor(model, tta=tta, tracking_uri=tracking_uri)
    frame = predict_store(source, predictor, out)
    ok = frame["error"].isna()
    return PredictResult(
        source=source,
        output=out,
        model=predictor.source.resolved,
        model_ref=str(model),
        run_id=predictor.source.run_id,
        epoch=predictor.source.epoch,
        tta=tta,
        images=len(frame),
        predicted=int(ok.sum()),
        errors=int((~ok).sum()),
        abstains=predictor.abstention is not None,  # UNK past the stored OOD threshold
        abstained=int(frame["abstained"].eq(True).sum()) if "abstained" in frame else 0,
        counts={str(k): int(v) for k, v in frame.loc[ok, "predicted_label"].value_counts().items()},
    )


@flow(name="skin-predict", log_prints=True)
def predict_flow(
    source: str,
    model: str = str(DEFAULT_MODEL),
    out: str | None = None,
    tta: bool = False,
    tracking_uri: str | None = None,
) -> PredictResult:
    """Predict every .jpg/.jpeg/.png under `source` (folder or s3:// prefix) with `model`.

    `out` defaults to `<source>/predictions/predictions-<UTC time>.parquet`; an existing output
    is refused and the inputs are only read. Returns the output URI and counts.
    """
    ref = parse_model_ref(model)  # the flow's boundary: deployments pass strings
    target = out or output_uri(source)
    result = predict_task(source, ref, target, tta, tracking_uri)
    get_run_logger().info(
        "%d images → %s (%d errors) with %s",
        result.images,
        result.output,
        result.errors,
        result.model,
    )
    rows = [{"label": k, "images": v} for k, v in sorted(result.counts.items())]
    rows.append({"label": "undecodable", "images": result.errors})
    create_table_artifact(
        key="skin-predictions",
        table=rows,
        description=f"{result.images} images from {source} → {result.output} ({result.model})",
    )
    return result
