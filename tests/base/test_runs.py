"""skin.base.runs: where every file of a run lives, one folder per run under `work_dir/runs/`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from skin.base.runs import RunPaths, cache_root, run_pointer
from skin.train import checkpoint as ckpt

FILES = [
    "best_checkpoint",
    "last_checkpoint",
    "config",
    "manifest",
    "outcome",
    "report",
    "bad_images",
    "split_counts",
    "onnx",
    "skipped_objects",
    "launch_config",
    "launch_log",
]


def test_a_run_folder_is_keyed_by_its_run_id(tmp_path: Path) -> None:
    run = RunPaths(tmp_path, "abc123")
    assert run.root == tmp_path / "runs" / "abc123"
    assert RunPaths(str(tmp_path), "abc123").root == run.root, "a str work_dir works the same"
    assert RunPaths(tmp_path, "other").root != run.root


def test_every_file_of_a_run_lies_in_its_folder_under_its_own_name(tmp_path: Path) -> None:
    run = RunPaths(tmp_path, "r1")
    paths = {name: getattr(run, name) for name in FILES}
    for name, path in paths.items():
        assert path.is_relative_to(run.root), f"{name} ({path}) outside the run folder"
    assert len(set(paths.values())) == len(paths), "two files share one path"
    assert run.launch_config != run.config, "rank 0 rewrites config; torchrun's copy stays"


def test_the_checkpoint_links_are_the_ones_skin_checkpoint_writes(tmp_path: Path) -> None:
    run = RunPaths(tmp_path, "r1")
    state = {"model": {"w": torch.zeros(1)}}
    ckpt.save(run.checkpoints, 1, state, is_best=True, keep=None)
    ckpt.save(run.checkpoints, 2, state, is_best=False, keep=None)
    assert ckpt.load(run.best_checkpoint)["epoch"] == 1
    assert ckpt.load(run.last_checkpoint)["epoch"] == 2
    assert [p.name for p in ckpt.listed(run.checkpoints)] == ["epoch_0001.pt", "epoch_0002.pt"]


def test_caches_and_pointers_are_shared_by_runs_not_inside_one(tmp_path: Path) -> None:
    a, b = RunPaths(tmp_path, "a"), RunPaths(tmp_path, "b")
    assert cache_root(tmp_path) == cache_root(str(tmp_path)) == tmp_path / "cache"
    assert not cache_root(tmp_path).is_relative_to(tmp_path / "runs"), "never in a run folder"
    pointer = run_pointer(tmp_path, "key42")
    assert pointer == tmp_path / "runs" / "by-key" / "key42.json"
    assert not pointer.is_relative_to(a.root) and not pointer.is_relative_to(b.root)
    assert run_pointer(tmp_path, "key43") != pointer, "one pointer per training key"


def test_run_paths_are_frozen_values(tmp_path: Path) -> None:
    run = RunPaths(tmp_path, "r1")
    assert run == RunPaths(tmp_path, "r1") and hash(run) == hash(RunPaths(tmp_path, "r1"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.run_id = "r2"  # type: ignore[misc]
