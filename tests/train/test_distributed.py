"""Distributed training: the sharded epoch order, and torchrun (gloo, CPU) matching one process."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from skin.base.config import ConfigError
from skin.data import manifest as mf
from skin.data.stages import build_manifest, list_images, source_uri
from skin.track.tracking import NullTracker
from skin.train import checkpoint as ckpt
from skin.train.datasets import make_loader
from skin.train.features import FeatureSet
from skin.train.launch import launch
from skin.train.stage import TrainOutcome, train_stage
from tests.helpers import tiny_config, tracking_db

# Head-only on cached features: exact arithmetic (no BatchNorm statistics in the trained part).
HEAD = {"model.freeze": "head", "train.batch_size": 32, "train.lr": 0.03}


def _batches(n: int, batch: int, rank: int, world: int, **kw: object) -> list[list[int]]:
    """The sample indices of every batch one rank sees (the features are the indices)."""
    ds = FeatureSet(torch.arange(n, dtype=torch.float32)[:, None], np.arange(n) % 3)
    loader = make_loader(ds, batch_size=batch, seed=7, epoch=2, rank=rank, world=world, **kw)
    return [x[:, 0].long().tolist() for x, _ in loader]


@pytest.mark.parametrize("mode", ["shuffle", "balanced", "ordered"])
@pytest.mark.parametrize("world", [2, 4])
def test_ranks_split_each_global_batch_exactly(mode: str, world: int) -> None:
    kw = {"shuffle": mode != "ordered", "balanced": mode == "balanced", "labels": np.arange(96) % 3}
    n, gbs = 96, 16
    single = _batches(n, gbs, 0, 1, **kw)
    ranks = [_batches(n, gbs // world, r, world, **kw) for r in range(world)]
    assert len({len(r) for r in ranks}) == 1, "every rank must run as many steps"
    assert len(ranks[0]) == len(single), "same number of (global) steps as one process"
    for k, batch in enumerate(single):
        union = [i for r in ranks for i in r[k]]
        assert sorted(union) == sorted(batch), f"global batch {k} differs from one process's"
    if mode != "balanced":  # a permutation: shards are disjoint and cover every sample once
        flat = [i for r in ranks for b in r for i in b]
        assert sorted(flat) == list(range(n)), "ranks must cover the set, each sample once"
    assert _batches(n, gbs, 0, 1, **kw) == single, "the order depends only on (seed, epoch)"


def test_uneven_set_is_padded_so_ranks_stay_in_step() -> None:
    ranks = [_batches(11, 2, r, 2, shuffle=True) for r in range(2)]
    sizes = [[len(b) for b in r] for r in ranks]
    assert sizes[0] == sizes[1] == [2, 2, 2], f"equal batches on every rank: {sizes}"
    flat = [i for r in ranks for b in r for i in b]
    assert set(flat) == set(range(11)) and len(flat) == 12, "one sample repeats, none is lost"


def test_batch_must_split_evenly_between_processes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="batch_size 32 is not a multiple of nproc 3"):
        tiny_config(tmp_path, tmp_path, **{"train.nproc": 3})


@pytest.fixture(scope="module")
def manifest_uri(tmp_path_factory: pytest.TempPathFactory, sample_data: Path) -> str:
    root = tmp_path_factory.mktemp("ddp")
    cfg = tiny_config(root, sample_data)
    uri = str(root / "manifest.parquet")
    mf.write(build_manifest(list_images(cfg.data), source_uri(cfg.data.uri), cfg.split), uri)
    return uri


def _cfg(manifest_uri: str, sample_data: Path, epochs: int):
    """One work_dir for every run here: the image and feature caches are built once."""
    return tiny_config(Path(manifest_uri).parent, sample_data, **HEAD, **{"train.epochs": epochs})


@pytest.fixture(scope="module")
def two_process_run(manifest_uri: str, sample_data: Path) -> TrainOutcome:
    """Three epochs with two gloo processes, global batch 32 (16 per process)."""
    return launch(manifest_uri, _cfg(manifest_uri, sample_data, 3), "ddp", nproc=2)


def _assert_same_training(a: TrainOutcome, b: TrainOutcome) -> None:
    assert (a.best_epoch, a.last_epoch) == (b.best_epoch, b.last_epoch)
    assert len(a.history) == len(b.history)
    for ha, hb in zip(a.history, b.history, strict=True):
        for key in ha.keys() - {"seconds"}:
            assert hb[key] == pytest.approx(ha[key], rel=1e-5, abs=1e-6), (
                f"epoch {ha['epoch']}: {key} {ha[key]} vs {hb[key]}"
            )
    sa = ckpt.load(Path(a.run_dir) / "checkpoints" / "last.pt")
    sb = ckpt.load(Path(b.run_dir) / "checkpoints" / "last.pt")
    for key, tensor in sa["model"].items():
        assert torch.allclose(tensor.float(), sb["model"][key].float(), atol=1e-5), f"{key}"
    for pid, state in sa["optimizer"]["state"].items():
        for name in ("exp_avg", "exp_avg_sq"):
            got = sb["optimizer"]["state"][pid][name]
            assert torch.allclose(state[name], got, atol=1e-6), f"Adam {name} of param {pid}"


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(
    two_process_run: TrainOutcome, manifest_uri: str, sample_data: Path
) -> None:
    one = train_stage(manifest_uri, _cfg(manifest_uri, sample_data, 3), NullTracker("single"))
    two = two_process_run
    assert two.feature_path and two.resumed_from is None
    _assert_same_training(one, two)
    assert one.history[-1]["train_loss"] < one.history[0]["train_loss"], "the head must learn"
    files = sorted(p.name for p in (Path(two.run_dir) / "checkpoints").iterdir())
    assert files == ["best.pt", "epoch_0001.pt", "epoch_0002.pt", "epoch_0003.pt", "last.pt"], (
        f"rank 0 alone writes checkpoints, nothing half-written: {files}"
    )
    assert (Path(two.run_dir) / "config.yaml").is_file()


@pytest.mark.slow
def test_two_process_resume_ends_where_one_uninterrupted_process_does(
    two_process_run: TrainOutcome, manifest_uri: str, sample_data: Path
) -> None:
    """A 2-process run stopped after 3 of 4 epochs, resumed with 2 processes."""
    runs = Path(two_process_run.run_dir).parent
    shutil.copytree(runs / "ddp", runs / "ddp-resumed")
    cfg = _cfg(manifest_uri, sample_data, 4)
    resumed = launch(manifest_uri, cfg, "ddp-resumed", nproc=2)
    assert (resumed.resumed_from, resumed.last_epoch) == (3, 4)
    one = train_stage(manifest_uri, cfg, NullTracker("single-4"))
    _assert_same_training(one, resumed)


@pytest.mark.slow
def test_train_task_with_nproc_records_into_its_one_mlflow_run(
    manifest_uri: str, sample_data: Path, tmp_path: Path
) -> None:
    """train.nproc > 1: the task launches torchrun; rank 0 logs into the task's open run."""
    from mlflow import MlflowClient

    from skin.base.config import PipelineConfig
    from skin.data.stages import manifest_ref
    from tasks.training import train_task

    uri = tracking_db(tmp_path)
    config = _cfg(manifest_uri, sample_data, 2).model_dump(mode="json")
    config["train"]["nproc"] = 2
    config["tracking"] |= {"tracking_uri": uri, "experiment": "ddp"}
    out = train_task.fn(manifest_ref(manifest_uri), PipelineConfig.model_validate(config))
    assert out.last_epoch == 2 and out.feature_path
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(out.run_id)
    assert run.info.status == "FINISHED", run.info.status
    steps = [m.step for m in client.get_metric_history(out.run_id, "epoch/train_loss")]
    assert steps == [1, 2], f"rank 0 alone logs each epoch once: {steps}"
    assert run.data.params["train.nproc"] == "2", "the resolved config is logged as params"
    ckpts = {a.path for a in client.list_artifacts(out.run_id, "checkpoints")}
    assert ckpts == {"checkpoints/epoch_0001.pt", "checkpoints/epoch_0002.pt"}, ckpts
