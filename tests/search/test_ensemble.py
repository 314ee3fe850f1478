"""Ensembles: the mean of the members' calibrated probabilities, served like one model."""

from __future__ import annotations

import base64
import io
import json
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from skin.search.ensemble import Member, write_members
from skin.serve import pyfunc as serving
from skin.serve.averaging import EnsembleError, EnsemblePredictor
from skin.serve.loading import load_predictor
from tests.helpers import invoke, tracking_db
from tests.serve.test_predict import tiny_checkpoints

TEMPERATURES = (1.7, 0.6)


def images(n: int = 3, size: int = 40) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def expected(paths: list[Path], data: list[bytes]) -> np.ndarray:
    """Each member alone, at its own temperature, then the plain mean."""
    probs = []
    for path, t in zip(paths, TEMPERATURES, strict=True):
        p = load_predictor(str(path), "cpu")
        p.temperature = t
        probs.append(p.predict(data))
    return np.mean(probs, axis=0)


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], Path]:
    """Two tiny models of different weights (the two epochs), and their ensemble folder."""
    root = tmp_path_factory.mktemp("ensemble")
    ckpts = tiny_checkpoints(root / "checkpoints")
    paths = [ckpts[1], ckpts[2]]
    folder = root / "ens"
    listed = [
        Member(p, t, f"m{i}") for i, (p, t) in enumerate(zip(paths, TEMPERATURES, strict=True))
    ]
    write_members(listed, folder)
    return paths, folder


def test_an_ensemble_folder_predicts_the_mean_of_its_calibrated_members(members) -> None:
    paths, folder = members
    data = images()
    ens = load_predictor(str(folder), "cpu")
    assert isinstance(ens, EnsemblePredictor) and len(ens.members) == 2
    got = ens.predict(data)
    np.testing.assert_allclose(got, expected(paths, data), atol=1e-5)
    assert not np.allclose(got, expected(paths[:1] * 2, data), atol=1e-3), "members differ"
    frame = ens.score(["a", "b", "bad"], {"a": data[0], "b": data[1], "bad": b"nope"}.__getitem__)
    np.testing.assert_allclose(frame.filter(like="prob_").to_numpy()[:2], got[:2], atol=1e-5)
    assert frame["error"].iloc[2] and frame["error"].iloc[:2].isna().all(), frame["error"]
    assert ens.top_k(got, 2)[0][0][1] == pytest.approx(got[0].max())


def test_a_changed_member_or_a_mismatched_class_set_is_refused(members, tmp_path: Path) -> None:
    paths, folder = members
    import shutil

    copy = tmp_path / "ens"
    shutil.copytree(folder, copy)
    (copy / "member_1" / "checkpoint.pt").write_bytes(b"tampered")
    with pytest.raises(EnsembleError, match="member 1"):
        load_predictor(str(copy), "cpu")
    a, b = load_predictor(str(paths[0]), "cpu"), load_predictor(str(paths[1]), "cpu")
    b.classes = b.classes[:-1]
    with pytest.raises(EnsembleError, match="member 1 predicts"):
        EnsemblePredictor([a, b], a.source)


@pytest.mark.slow
def test_an_ensembles_own_temperature_is_read_from_members_json_or_refused_by_name(
    members, tmp_path: Path
) -> None:
    """members.json's `temperature` calibrates the mean (softmax(log(mean) / T)); one written
    before it existed serves the plain mean; a bad one is refused naming the file."""
    import shutil

    from skin.serve.averaging import calibrate_mean

    paths, folder = members
    data = images()
    mean = expected(paths, data)
    for name, value in (("legacy", None), ("sharp", 0.5), ("bad", -1.0)):
        copy = shutil.copytree(folder, tmp_path / name)
        doc = json.loads((copy / "members.json").read_text())
        doc.pop("temperature")
        if value is not None:
            doc["temperature"] = value
        (copy / "members.json").write_text(json.dumps(doc))
        if name == "bad":
            with pytest.raises(EnsembleError, match=r"members\.json.*temperature.*positive"):
                load_predictor(str(copy), "cpu")
            continue
        got = load_predictor(str(copy), "cpu").predict(data)
        want = mean if value is None else calibrate_mean(mean, value)
        np.testing.assert_allclose(got, want, atol=1e-6)
    assert not np.allclose(calibrate_mean(mean, 0.5), mean), "T = 0.5 sharpens the mean"


def test_a_registered_ensemble_is_served_by_skin_predict_and_pyfunc(
    members, tmp_path: Path
) -> None:
    """Logged as one model, registered, then served by `skin predict --model models:/…@champion`
    and by MLflow's pyfunc with the single model's columns: same probabilities as the members."""
    import mlflow.pyfunc

    from skin.release.registry import GATE_METRIC, register_and_gate
    from skin.stats.abstain import Abstention, abstention_json
    from skin.track.tracking import MLflowTracker, tracked_run

    paths, folder = members
    data = images()
    want = expected(paths, data)
    report = tmp_path / "report"  # the ensemble's UNK rule travels with the logged model
    report.mkdir()
    threshold = float(np.sort(1 - want.max(1))[1:].mean())
    doc = abstention_json(Abstention("msp", threshold), 0.9, None, np.zeros(3))
    (report / "abstention.json").write_text(json.dumps(doc))
    uri = tracking_db(tmp_path)
    tracker = MLflowTracker(uri, "ensemble-unit")
    with tracked_run(tracker):
        tracker.log_metrics({GATE_METRIC: 0.5})
        model_uri = serving.log_ensemble(tracker, folder / "members.json", report)
    name = f"skin-ens-{uuid.uuid4().hex[:6]}"
    reg = register_and_gate(uri, name, model_uri, tracker.run_id)
    assert reg.alias == "champion"
    for ref in (f"models:/{name}@champion", f"runs:/{tracker.run_id}/model", tracker.run_id):
        served = load_predictor(ref, "cpu", tracking_uri=uri)
        np.testing.assert_allclose(served.predict(data), want, atol=1e-5, err_msg=ref)
        assert served.abstention == Abstention("msp", threshold), ref

    files = []
    for i, b in enumerate(data):
        files.append(tmp_path / f"img{i}.png")
        files[-1].write_bytes(b)
    out = tmp_path / "pred.parquet"
    code, text = invoke(
        "predict", *map(str, files), "--model", f"models:/{name}@champion",
        "--tracking-uri", uri, "--out", str(out),
    )  # fmt: skip
    assert code == 0, text
    got = pd.read_parquet(out).filter(like="prob_").to_numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)

    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    frame = pd.DataFrame({"image": [base64.b64encode(b).decode() for b in data]})
    answer = model.predict(frame)
    classes = load_predictor(str(paths[0]), "cpu").classes
    extra = ["label", "confidence", "ood_score", "abstained", "error"]
    assert list(answer.columns) == [f"p_{c}" for c in classes] + extra
    np.testing.assert_allclose(answer.filter(like="p_").to_numpy(), want, atol=1e-5)
    assert (answer["label"] == "UNK").tolist() == (1 - want.max(1) > threshold).tolist()
    listed = json.loads((folder / "members.json").read_text())["members"]
    assert [m["temperature"] for m in listed] == list(TEMPERATURES)


def test_cli_cv_and_ensemble_pass_their_options_to_the_flows(monkeypatch, tmp_path: Path) -> None:
    """`skin cv` prints per-fold and pooled numbers; `skin ensemble` wants --runs or --cv-run."""
    import flows.cv
    from flows.outcomes import CVResult, EnsembleResult

    seen: dict[str, object] = {}
    metrics = {"cv_balanced_accuracy_mean": 0.61, "cv_balanced_accuracy_std": 0.02,
               "cv_oof_balanced_accuracy": 0.6}  # fmt: skip
    folds = [
        {"fold": i, "run_id": f"r{i}", "dev_balanced_accuracy": 0.6 + i / 100} for i in range(3)
    ]

    def fake_cv(**kwargs: object) -> CVResult:
        seen["cv"] = kwargs
        return CVResult("p1", folds, metrics, "oof.parquet", "folds.csv", "m.parquet", "h")

    def fake_ensemble(**kwargs: object) -> EnsembleResult:
        seen["ensemble"] = kwargs
        metrics = {"test_balanced_accuracy": 0.7}
        return EnsembleResult("e1", metrics, "", "report", members=list(kwargs["runs"]))

    monkeypatch.setattr(flows.cv, "cv_flow", fake_cv)
    monkeypatch.setattr(flows.cv, "ensemble_flow", fake_ensemble)
    code, text = invoke(
        "cv", "--data", str(tmp_path), "--folds", "3", "--epochs", "2", "--register"
    )
    assert code == 0, text
    assert seen["cv"]["folds"] == 3 and seen["cv"]["register_model"] is True
    assert seen["cv"]["overrides"] == {"train.epochs": 2}
    assert "0.6000" in text and "r2" in text, text
    code, text = invoke("ensemble", "--runs", "a, b")
    assert code == 0 and seen["ensemble"]["runs"] == ["a", "b"], text
    code, text = invoke("ensemble")
    assert code != 0 and "--runs or --cv-run" in text, text


def test_an_ensemble_predicts_a_folder_through_the_batch_flow(members, tmp_path: Path) -> None:
    """flows/predict.py's task reads `predictor.abstention`: an ensemble must have one (None
    without abstention.json) and its table has no UNK columns then."""
    from flows.predict import predict_task

    _, folder = members
    for i, b in enumerate(images()):
        (tmp_path / f"img{i}.png").write_bytes(b)
    out = tmp_path / "out" / "pred.parquet"
    result = predict_task.fn(str(tmp_path), str(folder), str(out), False, None)
    assert result["images"] == 3 and result["errors"] == 0, result
    assert result["abstains"] is False and result["abstained"] == 0, result
    assert "ood_score" not in pd.read_parquet(out).columns


def test_ensemble_evaluation_sets_an_msp_unk_threshold_on_dev_for_the_coverage() -> None:
    """The ensemble's rule: 1 - max of its averaged probabilities, threshold on dev known images
    for the coverage, read on test with the single run's metric names; scores per image."""
    from skin.base.labels import CLASSES
    from skin.search.ensemble import evaluate_ensemble, summary_markdown
    from skin.stats.abstain import read_abstention

    rng = np.random.default_rng(1)

    def split(n: int) -> tuple[pd.DataFrame, np.ndarray]:
        p = rng.dirichlet(np.full(len(CLASSES), 0.4), n)
        truth = np.where(rng.random(n) < 0.7, p.argmax(1), rng.integers(0, len(CLASSES), n))
        rows = pd.DataFrame(
            {"key": [f"k{i}" for i in range(n)], "source": "s", "label": np.take(CLASSES, truth),
             "lesion_id": [f"l{i}" for i in range(n)]}
        )  # fmt: skip
        return rows, p

    scores = evaluate_ensemble(
        {"dev": split(300), "test": split(200)}, CLASSES, n_resamples=5, seed=0,
        malignant=("MEL",), coverage=0.9,
    )  # fmt: skip
    m = scores.metrics
    assert 0.9 <= m["dev_abstain_coverage"] < 0.9 + 2 / 300, m["dev_abstain_coverage"]
    rule = read_abstention(scores.abstention, "ensemble")
    assert rule.kind == "msp" and rule.threshold == m["dev_abstain_threshold"]
    assert scores.abstention["dev_coverage"] == pytest.approx(m["dev_abstain_coverage"])
    test = scores.predictions["test"]
    probs = test[[f"prob_{c}" for c in CLASSES]].to_numpy()
    np.testing.assert_allclose(test["ood_score"], 1 - probs.max(1))
    assert (test["abstained"] == (test["ood_score"] > rule.threshold)).all()
    assert m["test_abstain_rate"] == pytest.approx(test["abstained"].mean())
    assert m["test_abstain_rate"] > 0
    correct = probs.argmax(1) == test["label"].map(CLASSES.index).to_numpy()
    assert m["test_known_accuracy"] == pytest.approx(correct.mean())
    assert m["test_accepted_accuracy"] == pytest.approx(correct[~test["abstained"]].mean())
    assert "UNK above" in summary_markdown(m, ["a", "b"], "dev")


def with_rule(folder: Path, dst: Path, kind: str, threshold: float) -> Path:
    """A copy of the ensemble folder with an abstention.json beside its members.json."""
    import shutil

    from skin.stats.abstain import Abstention, abstention_json

    shutil.copytree(folder, dst)
    doc = abstention_json(Abstention(kind, threshold), 0.9, None, np.zeros(3))
    (dst / "abstention.json").write_text(json.dumps(doc))
    return dst


def test_an_ensemble_with_a_stored_rule_answers_unk_in_predict_batch_and_serving(
    members, tmp_path: Path
) -> None:
    """abstention.json beside members.json (as `ensemble_stage` writes it, and as the logged
    model carries it): `score`, the batch flow and the served frame answer UNK past it."""
    from flows.predict import predict_task
    from skin.serve.pyfunc import ensemble_artifacts_of, load_served, predict_frame

    _, folder = members
    data = images()
    msp = 1 - load_predictor(str(folder), "cpu").predict(data).max(1)
    threshold = float(np.sort(msp)[1:].mean())  # the least confident image is past it
    ens = load_predictor(str(with_rule(folder, tmp_path / "ens", "msp", threshold)), "cpu")
    assert ens.abstention is not None and ens.abstention.threshold == threshold
    frame = ens.score(["a", "b", "c"], dict(zip("abc", data, strict=True)).__getitem__)
    np.testing.assert_allclose(frame["ood_score"], msp, atol=1e-6)
    unk = msp > threshold
    assert unk.sum() == 1 and (frame["predicted_label"] == "UNK").tolist() == unk.tolist()
    assert frame["abstained"].tolist() == unk.tolist()
    assert frame.filter(like="prob_").notna().all().all(), "probabilities kept"

    for i, b in enumerate(data):
        (tmp_path / "imgs").mkdir(exist_ok=True)
        (tmp_path / "imgs" / f"img{i}.png").write_bytes(b)
    out = tmp_path / "pred.parquet"
    result = predict_task.fn(str(tmp_path / "imgs"), str(tmp_path / "ens"), str(out), False, None)
    assert result["abstains"] is True and result["abstained"] == 1, result

    report = tmp_path / "report"
    report.mkdir()
    (report / "abstention.json").write_text((tmp_path / "ens" / "abstention.json").read_text())
    artifacts = ensemble_artifacts_of(tmp_path / "ens" / "members.json", report)
    assert artifacts["abstention"] == str(report / "abstention.json")
    served = predict_frame(load_served({"members": artifacts["members"]}, "cpu"), pd.DataFrame(
        {"image": [base64.b64encode(b).decode() for b in data]}
    ))  # fmt: skip
    assert (served["label"] == "UNK").tolist() == unk.tolist()
    np.testing.assert_allclose(served["ood_score"], msp, atol=1e-6)


def test_an_ensemble_refuses_an_energy_rule(members, tmp_path: Path) -> None:
    _, folder = members
    with pytest.raises(EnsembleError, match="msp"):
        load_predictor(str(with_rule(folder, tmp_path / "ens", "energy", -1.0)), "cpu")


def test_the_ensemble_stage_abstains_as_a_run_and_predicts_its_own_scores(
    members, sample_data: Path, tmp_path: Path
) -> None:
    """`ensemble_stage`: the single run's abstention metrics, abstention.json in the report and
    beside members.json, per-image scores; loading the folder back gives the same scores."""
    from skin.search.ensemble import ensemble_stage
    from skin.track.tracking import NullTracker
    from tests.helpers import make_manifest

    paths, _ = members
    uri, cfg = make_manifest(tmp_path, sample_data, **{"evaluate.bootstrap": 5,
                             "predict.abstain_coverage": 0.8})  # fmt: skip
    tracker = NullTracker("ens1")
    outcome = ensemble_stage([str(p) for p in paths], uri, cfg, tracker)
    m = outcome.metrics
    for name in ("dev_abstain_threshold", "dev_abstain_coverage", "test_abstain_rate",
                 "test_accepted_accuracy", "test_known_accuracy"):  # fmt: skip
        assert tracker.metrics[name] == m[name], name
    dev = pd.read_parquet(Path(outcome.report_dir) / "predictions_dev.parquet")
    assert 0.8 <= m["dev_abstain_coverage"] < 0.8 + 2 / len(dev), m["dev_abstain_coverage"]
    report = json.loads((Path(outcome.report_dir) / "abstention.json").read_text())
    assert report["score"] == "msp" and report["threshold"] == m["dev_abstain_threshold"]
    folder = Path(cfg.work_dir) / "runs" / "ens1" / "ensemble"
    assert json.loads((folder / "abstention.json").read_text()) == report
    test = pd.read_parquet(Path(outcome.report_dir) / "predictions_test.parquet")
    ens = load_predictor(str(folder), "cpu")
    keys = test["key"].tolist()
    served = ens.score(keys, lambda k: (Path(test["source"].iloc[0]) / k).read_bytes())
    np.testing.assert_allclose(served["ood_score"], test["ood_score"], atol=1e-5)
    assert (served["predicted_label"] == "UNK").tolist() == test["abstained"].tolist()
    assert "UNK above" in (Path(outcome.report_dir) / "summary.md").read_text()


def test_the_ensemble_stage_chooses_its_temperature_and_thresholds_on_its_own_dev_probabilities(
    members, sample_data: Path, tmp_path: Path
) -> None:
    """#21: the temperature, the UNK threshold and the operating points an ensemble ships are
    chosen on what it serves over dev (the members' mean, then its own temperature), not on any
    one member's probabilities; `skin cv`'s fold ensembles and `skin ensemble --runs` both come
    through this stage."""
    from skin.data import manifest as mf
    from skin.search.ensemble import ensemble_stage, fit_ensemble_temperature
    from skin.serve.averaging import calibrate_mean
    from skin.stats.abstain import coverage_threshold
    from skin.stats.operating import choose_thresholds
    from skin.track.tracking import NullTracker
    from tests.helpers import make_manifest

    paths, _ = members
    uri, cfg = make_manifest(tmp_path, sample_data, **{"evaluate.bootstrap": 5,
                             "predict.abstain_coverage": 0.8})  # fmt: skip
    outcome = ensemble_stage([str(p) for p in paths], uri, cfg, NullTracker("ens2"))
    dev = mf.read(uri).query("split == 'dev'").reset_index(drop=True)
    data = [(Path(dev["source"].iloc[0]) / k).read_bytes() for k in dev["key"]]
    ens = load_predictor(str(Path(cfg.work_dir) / "runs" / "ens2" / "ensemble"), "cpu")
    classes = list(ens.classes)
    y = dev["label"].map(classes.index).to_numpy()
    mean = np.mean([load_predictor(str(p), "cpu").predict(data) for p in paths], axis=0)
    fit = fit_ensemble_temperature(mean, y)
    assert ens.temperature == pytest.approx(fit.temperature, rel=1e-4), "T fitted on the mean"
    assert outcome.metrics["ensemble_temperature"] == pytest.approx(fit.temperature, rel=1e-4)
    served = ens.predict(data)
    np.testing.assert_allclose(served, calibrate_mean(mean, ens.temperature), atol=1e-5)
    report = Path(outcome.report_dir)
    scored = pd.read_parquet(report / "predictions_dev.parquet").set_index("key").loc[dev["key"]]
    np.testing.assert_allclose(scored[[f"prob_{c}" for c in classes]], served, atol=1e-5)
    rule = json.loads((report / "abstention.json").read_text())
    assert rule["threshold"] == pytest.approx(coverage_threshold(1 - served.max(1), 0.8), abs=1e-6)
    points = json.loads((report / "operating_points.json").read_text())
    chosen = choose_thresholds(y, served, classes, malignant=cfg.evaluate.malignant)
    assert chosen, "the sample data's dev answers the mel and malignant questions"
    for t in chosen:
        name = f"{t.name}_threshold_at_spec{round(t.target * 100)}"
        assert points[name] == pytest.approx(t.value, abs=1e-5), name


def test_drift_embeds_with_an_ensemble_champions_first_member(members) -> None:
    """Once an ensemble is champion, `skin drift` reads its members.json, not a checkpoint."""
    from skin.base.config import ModelConfig
    from skin.monitor.drift import backbone

    _, folder = members
    net, spec = backbone(str(folder / "members.json"), ModelConfig(), None, 8)
    alone, _ = backbone(str(folder / "member_0" / "checkpoint.pt"), ModelConfig(), None, 8)
    for a, b in zip(net.state_dict().values(), alone.state_dict().values(), strict=True):
        assert torch.equal(a, b), "the first member's weights"
    assert spec.size > 0


def test_members_that_trained_on_the_judged_images_are_refused() -> None:
    from skin.search.ensemble import check_members_unseen, seen_in_training

    evaluation = pd.DataFrame(
        {
            "key": ["t1", "t2", "d1", "d2", "x1"],
            "split": ["train", "train", "dev", "dev", "test"],
            "keep": True,
            "fingerprint": ["f1", "f2", "f3", "f4", "f5"],
            "lesion_id": ["L1", "L2", "L3", "L4", "L5"],
        }
    )
    same = evaluation.copy()  # trained on the evaluation manifest's own train split
    assert seen_in_training(same, evaluation) == {"dev": 0, "test": 0}
    other = evaluation.assign(split=["dev", "test", "train", "dev", "dev"])  # a fold's manifest
    assert seen_in_training(other, evaluation) == {"dev": 1, "test": 0}, "d1 by key"
    twin = pd.DataFrame(  # another dataset version: a copy of x1's file, a photo of lesion L4
        {
            "key": ["copy", "new"],
            "split": "train",
            "keep": True,
            "fingerprint": ["f5", "f9"],
            "lesion_id": [None, "L4"],
        }
    )
    assert seen_in_training(twin, evaluation) == {"dev": 1, "test": 1}, "by file and by lesion"
    dropped = other.assign(keep=[True, True, False, True, True])  # undersampled: never trained
    assert seen_in_training(dropped, evaluation) == {"dev": 0, "test": 0}
    check_members_unseen({"a": same}, evaluation)
    with pytest.raises(EnsembleError, match="member b trained on 1 dev"):
        check_members_unseen({"a": same, "b": other}, evaluation)
