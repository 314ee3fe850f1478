"""Prediction: registry, run and checkpoint agree with evaluation; TTA invariance; batch on S3."""

from __future__ import annotations

import io
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skin.data import manifest as mf
from skin.serve import pyfunc as serving
from skin.serve.loading import load_predictor
from skin.serve.predict import PredictError, Predictor, predict_store
from tests.helpers import snapshot, tracking_db
from tests.recipes import TINY

ATOL = 1e-5


def e2e(test):
    """A test on the module's pipeline run: slow, and it needs the servers."""
    return pytest.mark.slow(pytest.mark.server(test))


@dataclass(frozen=True)
class Trained:
    """One tiny pipeline run, registered as `champion` under a name of its own."""

    result: dict[str, Any]
    name: str
    tracking_uri: str
    data: Path
    checkpoint: Path

    @property
    def version(self) -> str:
        return str(self.result["registration"]["version"])

    def test_images(self, n: int | None = None) -> tuple[list[str], list[bytes]]:
        df = mf.read(self.result["manifest_uri"])
        keys = sorted(df.loc[df["split"] == "test", "key"])[:n]
        return keys, [(self.data / k).read_bytes() for k in keys]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, sample_data: Path, mlflow_server, prefect_api) -> Trained:
    from flows.pipeline import pipeline_flow

    work = tmp_path_factory.mktemp("predict") / "work"
    name = f"skin-test-{uuid.uuid4().hex[:8]}"
    overrides = {
        **TINY,
        "train.epochs": 6,
        "work_dir": str(work),
        "tracking.tracking_uri": mlflow_server.url,
        "tracking.experiment": f"predict-{uuid.uuid4().hex[:8]}",
        "tracking.registered_model": name,
    }
    result = pipeline_flow(data_uri=str(sample_data), overrides=overrides)
    assert result["registration"]["alias"] == "champion", result["registration"]
    checkpoint = work / "runs" / result["run_id"] / "checkpoints" / "best.pt"
    assert checkpoint.is_file(), f"best checkpoint missing: {checkpoint}"
    return Trained(result, name, mlflow_server.url, sample_data, checkpoint)


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG")
    return buf.getvalue()


@e2e
def test_registry_run_and_checkpoint_give_the_same_probabilities(trained: Trained) -> None:
    _, images = trained.test_images(6)
    refs = {
        "alias": f"models:/{trained.name}@champion",
        "version": f"models:/{trained.name}/{trained.version}",
        "run": f"runs:/{trained.result['run_id']}/model",
        "file": str(trained.checkpoint),
    }
    predictors = {
        k: load_predictor(r, "cpu", tracking_uri=trained.tracking_uri) for k, r in refs.items()
    }
    probs = {k: p.predict(images) for k, p in predictors.items()}
    for key, p in probs.items():
        assert p.shape == (6, 8), f"{key}: one row per image, one column per class: {p.shape}"
        diff = np.abs(p - probs["file"]).max()
        assert diff < ATOL, f"{key} ({refs[key]}) differs from the checkpoint file by {diff}"
    alias = predictors["alias"].source
    assert alias.resolved == f"models:/{trained.name}/{trained.version}", alias
    assert alias.run_id == trained.result["run_id"], f"champion comes from the run: {alias}"
    assert alias.epoch == trained.result["best_epoch"], f"the best epoch is loaded: {alias}"
    assert alias.sha256 and alias.checkpoint.endswith("/checkpoint.pt"), f"pinned: {alias}"
    assert predictors["file"].classes == predictors["alias"].classes, "one class order"
    temperatures = {k: p.temperature for k, p in predictors.items()}
    assert len(set(temperatures.values())) == 1, f"one calibration on every path: {temperatures}"


@e2e
def test_predictions_match_the_evaluation(trained: Trained) -> None:
    from mlflow import MlflowClient
    from sklearn.metrics import balanced_accuracy_score

    from skin.base.config import PipelineConfig
    from skin.evaluate.stage import predict_split
    from skin.stats.calibration import apply_temperature
    from skin.train.checkpoint import load
    from skin.train.feeds import index_splits

    predictor = load_predictor(str(trained.checkpoint), "cpu")
    cfg = PipelineConfig.model_validate(load(trained.checkpoint)["config"])
    manifest = mf.read(trained.result["manifest_uri"])
    data = index_splits(manifest, cfg, predictor.spec)
    _, labels, logits = predict_split(predictor.model, data, "test", predictor.device, 32)
    expected = apply_temperature(logits, predictor.temperature)  # evaluation's calibration
    saved = json.loads(
        (trained.checkpoint.parent.parent / "report" / "calibration.json").read_text()
    )
    assert predictor.temperature == pytest.approx(saved["temperature"]), "the run's temperature"
    keys = manifest["key"].iloc[data.rows["test"]]
    ours = predictor.predict([(trained.data / k).read_bytes() for k in keys])
    diff = np.abs(ours - expected).max()
    assert diff < ATOL, f"predict differs from the evaluation's test probabilities by {diff}"
    logged = MlflowClient(trained.tracking_uri).get_run(trained.result["run_id"]).data.metrics
    score = balanced_accuracy_score(labels, ours.argmax(axis=1))
    assert score == pytest.approx(logged["test_balanced_accuracy"], abs=1e-9), (
        f"balanced accuracy {score} vs the logged {logged['test_balanced_accuracy']}"
    )


@e2e
def test_the_logged_mlflow_model_holds_the_same_weights(trained: Trained) -> None:
    """The image-in pyfunc MLflow serves answers as the checkpoint we load does."""
    import base64

    import mlflow

    from skin.base.labels import CLASSES

    mlflow.set_tracking_uri(trained.tracking_uri)
    served = mlflow.pyfunc.load_model(f"models:/{trained.name}@champion")
    predictor = load_predictor(str(trained.checkpoint), "cpu")
    images = trained.test_images(3)[1]
    frame = pd.DataFrame({"image": [base64.b64encode(b).decode() for b in images]})
    theirs = served.predict(frame)[[f"p_{c}" for c in CLASSES]].to_numpy()
    diff = np.abs(theirs - predictor.predict(images)).max()
    assert diff < ATOL, f"MLflow's logged model differs from the checkpoint by {diff}"


@e2e
def test_tta_prediction_is_invariant_to_flips_and_quarter_turns(trained: Trained) -> None:
    """Images at the decode size, so decoding is exact and only the model's orientation matters."""
    from skin.data.images import decode

    plain = load_predictor(str(trained.checkpoint), "cpu")
    tta = load_predictor(str(trained.checkpoint), "cpu", tta=True)
    assert plain.spec.cache_size - plain.spec.size == 2, "the centre crop is symmetric here"
    jpeg = trained.test_images(1)[1][0]
    decoded = decode(jpeg, plain.spec.cache_size)
    original = png(decoded)
    assert np.array_equal(plain.to_input(original), plain.to_input(jpeg)), "decoding is exact"
    variants = {
        "h-flip": decoded[:, ::-1],
        "v-flip": decoded[::-1],
        "rot90": np.rot90(decoded, 1),
        "rot270": np.rot90(decoded, 3),
    }
    reference = tta.predict([original])
    for name, image in variants.items():
        diff = np.abs(tta.predict([png(image)]) - reference).max()
        assert diff < 1e-4, f"TTA prediction changed by {diff} under {name}"
    untta = np.abs(plain.predict([png(variants["rot90"])]) - plain.predict([original])).max()
    assert untta > 1e-4, (
        f"without TTA a rotation should change the output ({untta}): test has teeth"
    )


def upload_inputs(s3_client, bucket: str, data: Path, per_class: int = 2) -> dict[str, bytes]:
    """Two images per class under incoming/<class>/, one broken JPEG and a note."""
    objects: dict[str, bytes] = {}
    for folder in sorted(p for p in data.iterdir() if p.is_dir()):
        for path in sorted(folder.iterdir())[:per_class]:
            objects[f"incoming/{folder.name}/{path.name}"] = path.read_bytes()
    objects["incoming/broken.jpg"] = b"\xff\xd8\xff\xe0 this is not a jpeg"
    objects["incoming/notes.txt"] = b"not an image"
    objects["elsewhere/other.jpg"] = next(iter(objects.values()))
    for key, body in objects.items():
        s3_client.put_object(Bucket=bucket, Key=key, Body=body)
    return objects


@e2e
def test_batch_prediction_on_an_s3_prefix_writes_next_to_the_inputs(
    trained: Trained, s3_client, bucket: str
) -> None:
    from flows.predict import predict_flow

    objects = upload_inputs(s3_client, bucket, trained.data)
    before = snapshot(s3_client, bucket)
    source = f"s3://{bucket}/incoming"
    model = f"models:/{trained.name}@champion"
    result = predict_flow(source=source, model=model, tracking_uri=trained.tracking_uri)

    after = snapshot(s3_client, bucket)
    assert {k: after[k] for k in before} == before, "every input object is byte-identical"
    new = sorted(set(after) - set(before))
    assert len(new) == 1 and new[0].startswith("incoming/predictions/predictions-"), new
    assert new[0].endswith(".parquet") and result["output"] == f"s3://{bucket}/{new[0]}", result
    assert (result["images"], result["predicted"], result["errors"]) == (17, 16, 1), result

    body = s3_client.get_object(Bucket=bucket, Key=new[0])["Body"].read()
    frame = pd.read_parquet(io.BytesIO(body))
    prob_cols = [f"prob_{c}" for c in ("AK", "BCC", "BKL", "DF", "MEL", "NV", "SCC", "VASC")]
    abstention = ["ood_score", "abstained"]  # every evaluated model stores its UNK rule
    expected_cols = [
        "key",
        "predicted_label",
        "probability",
        *prob_cols,
        *abstention,
        "model",
        "error",
    ]
    assert list(frame.columns) == expected_cols, f"columns: {list(frame.columns)}"
    wanted = sorted(
        k.removeprefix("incoming/")
        for k in objects
        if k.startswith("incoming/") and not k.endswith(".txt")
    )
    assert sorted(frame["key"]) == wanted, "every image under the prefix, nothing else"
    assert set(frame["model"]) == {f"models:/{trained.name}/{trained.version}"}, "model recorded"

    broken = frame.set_index("key").loc["broken.jpg"]
    assert "ImageDecodeError" in broken["error"], f"an error row: {broken.to_dict()}"
    assert pd.isna(broken["predicted_label"]) and pd.isna(broken["prob_MEL"]), broken.to_dict()
    good = frame[frame["error"].isna()]
    assert len(good) == 16, f"16 decodable images: {len(good)}"
    probs = good[prob_cols].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5), "probabilities sum to one"
    labels = [c.removeprefix("prob_") for c in np.array(prob_cols)[probs.argmax(axis=1)]]
    labels = ["UNK" if out else c for c, out in zip(labels, good["abstained"], strict=True)]
    assert list(good["predicted_label"]) == labels, "the most likely class, or UNK"
    assert np.allclose(good["probability"], probs.max(axis=1)), "probability of that label"

    predictor = load_predictor(model, "cpu", tracking_uri=trained.tracking_uri)
    direct = predictor.predict([objects[f"incoming/{k}"] for k in good["key"]])
    assert np.abs(direct - probs).max() < ATOL, "the batch equals one-by-one prediction"

    with pytest.raises(PredictError, match="already exists"):
        predict_store(source, predictor, result["output"])
    assert snapshot(s3_client, bucket) == after, "a refused run writes nothing"


@e2e
def test_local_folder_to_csv_refuses_bad_outputs(trained: Trained, tmp_path: Path) -> None:
    predictor: Predictor = load_predictor(str(trained.checkpoint), "cpu")
    folder = tmp_path / "in"
    folder.mkdir()
    keys, images = trained.test_images(3)
    for key, body in zip(keys, images, strict=True):
        (folder / Path(key).name).write_bytes(body)
    (folder / "empty.png").write_bytes(b"")
    out = tmp_path / "out" / "p.csv"
    frame = predict_store(str(folder), predictor, str(out))
    written = pd.read_csv(out)
    assert len(frame) == len(written) == 4, f"three images and one empty file: {len(written)}"
    assert written["error"].notna().sum() == 1, "the empty file has an error row"
    for bad, why in ((tmp_path / "p.jpg", "must end in"), (out, "already exists")):
        with pytest.raises(PredictError, match=why):
            predict_store(str(folder), predictor, str(bad))
    with pytest.raises(PredictError, match=r"no \.jpg"):
        predict_store(str(tmp_path / "out"), predictor, str(tmp_path / "x.csv"))
    with pytest.raises(PredictError, match="not a checkpoint file"):
        load_predictor(str(tmp_path / "missing.pt"), "cpu")


def _cli_has_predict() -> bool:
    from skin.cli import app

    return any(c.name == "predict" for c in app.registered_commands)


@e2e
@pytest.mark.skipif(
    not _cli_has_predict(), reason="`skin predict` is not in skin/cli/__init__.py yet"
)
def test_cli_predicts_images_and_folders(trained: Trained, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from skin.cli import app

    keys, _ = trained.test_images(2)
    paths = [str(trained.data / k) for k in keys]
    runner = CliRunner()
    args = ["--json", "predict", *paths, "--model", str(trained.checkpoint), "--top-k", "2"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    rows = payload["predictions"]
    assert [r["image"] for r in rows] == paths, rows
    assert all(len(r["top_k"]) == 2 for r in rows), "two classes per image"
    ranked = all(r["top_k"][0]["probability"] >= r["top_k"][1]["probability"] for r in rows)
    assert ranked, f"top-k is best first: {rows}"

    folder = tmp_path / "in"
    folder.mkdir()
    for path in paths:
        (folder / Path(path).name).write_bytes(Path(path).read_bytes())
    out = tmp_path / "preds.parquet"
    args = ["--json", "predict", str(folder), "--model", str(trained.checkpoint), "--out", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["images"] == 2 and out.is_file(), res.stdout
    missing = runner.invoke(
        app, ["predict", str(tmp_path / "nope.jpg"), "--model", str(trained.checkpoint)]
    )
    assert missing.exit_code == 1, f"a missing image fails the command: {missing.output}"


# --------------------------------------------------------------------------- registered versions


@dataclass(frozen=True)
class Registered:
    """A run with two epoch checkpoints; epoch 2 evaluated, logged with its model and registered."""

    uri: str
    name: str
    run_id: str
    version: str
    checkpoints: dict[int, Path]


def tiny_checkpoints(folder: Path) -> dict[int, Path]:
    """Two epochs of different weights, written as training writes them (epoch 2 is best)."""
    import timm
    import torch

    from skin.base.config import load_config
    from skin.base.labels import CLASSES
    from skin.train import checkpoint as ckpt

    cfg = load_config(None, dict(TINY)).model_dump(mode="json")
    paths = {}
    for epoch in (1, 2):
        torch.manual_seed(epoch)
        model = timm.create_model(TINY["model.name"], pretrained=False, num_classes=len(CLASSES))
        state = {"model": model.state_dict(), "config": cfg, "classes": list(CLASSES)}
        paths[epoch] = ckpt.save(folder, epoch, state, is_best=epoch == 2, keep=None)
    return paths


def register_epoch(tmp_path: Path, *, with_checkpoint: bool = True) -> Registered:
    """What train, evaluate and register do to MLflow, for a run whose best epoch is 2."""

    from skin.release.registry import GATE_METRIC, register_and_gate
    from skin.track.tracking import MLflowTracker, tracked_run

    uri = tracking_db(tmp_path)
    paths = tiny_checkpoints(tmp_path / "checkpoints")
    tracker = MLflowTracker(uri, "predict-registered")
    with tracked_run(tracker):
        for path in paths.values():
            tracker.log_artifact(path, "checkpoints")
        tracker.log_metrics({"best_epoch": 2.0, GATE_METRIC: 0.5})
        if with_checkpoint:
            model_uri = serving.log_model(tracker, paths[2])
        else:  # as versions logged before checkpoints were kept (and fast: no pt2 export)
            model_uri = legacy_model(uri, tracker.run_id)
    name = f"skin-unit-{uuid.uuid4().hex[:6]}"
    reg = register_and_gate(uri, name, model_uri, tracker.run_id)
    return Registered(uri, name, tracker.run_id, reg.version, paths)


def legacy_model(uri: str, run_id: str) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_run(run_id).info.experiment_id
    model = client.create_logged_model(experiment, name="model", source_run_id=run_id)
    return f"models:/{model.model_id}"


def same_weights(model, checkpoint: Path) -> bool:
    from skin.train import checkpoint as ckpt

    saved = ckpt.load(checkpoint)["model"]
    return all(v.equal(saved[k]) for k, v in model.state_dict().items())


def reevaluate_epoch_1(reg: Registered) -> None:
    """`skin evaluate --checkpoint epoch_0001.pt` logs best_epoch 1 into the same run."""
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=reg.uri).log_metric(reg.run_id, "best_epoch", 1.0)


def test_a_registered_version_keeps_serving_the_weights_it_was_registered_with(
    tmp_path: Path,
) -> None:
    reg = register_epoch(tmp_path)
    reevaluate_epoch_1(reg)
    for ref in (f"models:/{reg.name}@champion", f"models:/{reg.name}/{reg.version}"):
        predictor = load_predictor(ref, "cpu", tracking_uri=reg.uri)
        assert predictor.source.epoch == 2, f"{ref} serves epoch {predictor.source.epoch}"
        assert same_weights(predictor.model, reg.checkpoints[2]), f"{ref}: other weights"
        assert predictor.source.version == reg.version, predictor.source
    run = load_predictor(f"runs:/{reg.run_id}/model", "cpu", tracking_uri=reg.uri)
    assert run.source.epoch == 1, "a run reference follows the run's current best epoch"


def test_a_changed_registered_checkpoint_is_refused(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    reg = register_epoch(tmp_path)
    client = MlflowClient(tracking_uri=reg.uri)
    tags = client.get_model_version(reg.name, reg.version).tags
    location = client.get_logged_model(tags["skin.model_id"]).artifact_location
    stored = Path(location.removeprefix("file://")) / tags["skin.train.checkpoint"]
    assert stored.is_file(), f"the checkpoint is logged inside the model: {stored}"
    stored.write_bytes(reg.checkpoints[1].read_bytes())
    with pytest.raises(PredictError, match="sha256"):
        load_predictor(f"models:/{reg.name}@champion", "cpu", tracking_uri=reg.uri)


def test_a_version_without_a_recorded_checkpoint_falls_back_to_the_runs_best_epoch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Versions registered before checkpoints were recorded still load, with a warning."""
    reg = register_epoch(tmp_path, with_checkpoint=False)
    with caplog.at_level("WARNING"):
        predictor = load_predictor(f"models:/{reg.name}@champion", "cpu", tracking_uri=reg.uri)
    assert same_weights(predictor.model, reg.checkpoints[2]), "the run's best epoch"
    assert "records no checkpoint" in caplog.text, caplog.text


# --------------------------------------------------------------------------- abstention


@dataclass(frozen=True)
class Abstaining:
    """A run folder whose report holds an abstention rule splitting `images` in two."""

    checkpoint: Path
    images: Path
    keys: list[str]
    scores: np.ndarray  # each image's OOD score (energy, T = 1)
    threshold: float


def abstaining_run(tmp_path: Path) -> Abstaining:
    from skin.stats.abstain import ood_scores

    checkpoint = tiny_checkpoints(tmp_path / "run" / "checkpoints")[2]
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    keys = [f"lesion_{i}.png" for i in range(6)]
    for key in keys:
        (folder / key).write_bytes(png(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)))
    probe = load_predictor(str(checkpoint), "cpu")  # before the report exists: never abstains
    assert probe.abstention is None
    arrays = np.stack([probe.to_input((folder / k).read_bytes()) for k in keys])
    scores = ood_scores(probe.probs_and_logits(arrays)[1], 1.0, "energy")
    threshold = float(np.median(scores))
    report = tmp_path / "run" / "report"
    report.mkdir()
    (report / "calibration.json").write_text('{"temperature": 1.0}')
    rule = {"score": "energy", "threshold": threshold}
    (report / "abstention.json").write_text(json.dumps(rule))
    return Abstaining(checkpoint, folder, keys, scores, threshold)


def test_a_checkpoint_with_abstention_answers_unk_in_image_batch_and_flow_modes(
    tmp_path: Path,
) -> None:
    from flows.predict import predict_task
    from tests.helpers import invoke

    run = abstaining_run(tmp_path)
    past = run.scores > run.threshold
    assert 0 < past.sum() < len(past), run.scores
    predictor = load_predictor(str(run.checkpoint), "cpu")
    assert predictor.abstention is not None and predictor.abstention.threshold == run.threshold

    batch = predict_store(str(run.images), predictor, str(tmp_path / "out.csv"))
    batch = batch.set_index("key").loc[run.keys]
    np.testing.assert_allclose(batch["ood_score"], run.scores, rtol=1e-4)
    assert batch["abstained"].tolist() == past.tolist(), batch
    assert (batch.loc[past, "predicted_label"] == "UNK").all(), batch
    probs = batch[[f"prob_{c}" for c in predictor.classes]].to_numpy()
    best = [predictor.classes[j] for j in probs.argmax(1)]
    assert batch.loc[~past, "predicted_label"].tolist() == [
        b for b, p in zip(best, past, strict=True) if not p
    ]
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=ATOL)  # the probabilities stay

    flow = predict_task.fn(
        str(run.images), str(run.checkpoint), str(tmp_path / "f.csv"), False, None
    )
    assert flow["abstains"] and flow["abstained"] == past.sum(), flow
    assert flow["counts"].get("UNK") == past.sum(), flow["counts"]

    paths = [str(run.images / k) for k in run.keys]
    code, out = invoke("--json", "predict", *paths, "--model", str(run.checkpoint))
    assert code == 0, out
    rows = json.loads(out)["predictions"]
    assert [r["answer"] == "UNK" for r in rows] == past.tolist(), rows
    assert all(len(r["top_k"]) == 3 for r in rows), "the classes' probabilities still shown"


def test_without_abstention_json_the_frame_is_as_before(tmp_path: Path) -> None:
    checkpoint = tiny_checkpoints(tmp_path / "checkpoints")[2]
    predictor = load_predictor(str(checkpoint), "cpu")
    image = png(np.zeros((40, 40, 3), dtype=np.uint8))
    frame = predictor.score(["a"], lambda key: image)
    assert "ood_score" not in frame and "abstained" not in frame, frame.columns
    assert frame["predicted_label"][0] in predictor.classes


def test_a_run_reference_brings_the_runs_abstention_rule(tmp_path: Path) -> None:
    from skin.track.tracking import MLflowTracker, tracked_run

    run = abstaining_run(tmp_path)
    uri = tracking_db(tmp_path)
    tracker = MLflowTracker(uri, "predict-abstain")
    with tracked_run(tracker):
        tracker.log_artifact(run.checkpoint.parent / "epoch_0002.pt", "checkpoints")
        tracker.log_artifact(run.checkpoint.parent.parent / "report", "report")
        tracker.log_metrics({"best_epoch": 2.0})
    predictor = load_predictor(f"runs:/{tracker.run_id}/model", "cpu", tracking_uri=uri)
    assert predictor.abstention is not None, "abstention.json comes with the run's checkpoint"
    assert predictor.abstention.threshold == run.threshold
