"""skin.train.checkpoint: atomic epoch files, `last`/`best` links, retention that keeps `best`, safe loads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from skin.train import checkpoint as ckpt


def state(value: float) -> dict[str, object]:
    """A plain-tensor state whose weight names its epoch."""
    return {"model": {"w": torch.tensor([value])}, "history": [{"epoch": value}]}


def weight(path: Path) -> float:
    return float(ckpt.load(path)["model"]["w"])


def test_save_writes_the_epoch_file_with_its_format_and_epoch(tmp_path: Path) -> None:
    folder = tmp_path / "nested" / "checkpoints"  # created on the first save
    path = ckpt.save(folder, 7, state(7.0), is_best=False, keep=None)
    assert path == folder / "epoch_0007.pt" == ckpt.epoch_path(folder, 7), path
    loaded = ckpt.load(path)
    assert loaded["format"] == ckpt.FORMAT and loaded["epoch"] == 7, sorted(loaded)
    assert loaded["history"] == [{"epoch": 7.0}], "plain values come back as saved"
    assert not (folder / "best.pt").exists(), "best moves only when the epoch is the best"


def test_last_follows_every_save_and_best_only_the_best(tmp_path: Path) -> None:
    for epoch, best in ((1, True), (2, False), (3, True), (4, False)):
        ckpt.save(tmp_path, epoch, state(float(epoch)), is_best=best, keep=None)
        assert ckpt.load(tmp_path / "last.pt")["epoch"] == epoch, f"last after epoch {epoch}"
    assert ckpt.load(tmp_path / "best.pt")["epoch"] == 3, "best is the last epoch flagged best"
    assert weight(tmp_path / "best.pt") == 3.0


def test_without_retention_every_epoch_is_kept_oldest_first(tmp_path: Path) -> None:
    for epoch in (3, 1, 2):
        ckpt.save(tmp_path, epoch, state(float(epoch)), is_best=False, keep=None)
    assert [p.name for p in ckpt.listed(tmp_path)] == [
        "epoch_0001.pt",
        "epoch_0002.pt",
        "epoch_0003.pt",
    ], "listed is sorted by epoch, and last/best are not epoch files"


@pytest.mark.parametrize("keep", [1, 2])
def test_retention_never_deletes_the_best_even_when_it_is_old(tmp_path: Path, keep: int) -> None:
    for epoch in range(1, 7):
        ckpt.save(tmp_path, epoch, state(float(epoch)), is_best=epoch == 2, keep=keep)
    kept = [int(p.stem.split("_")[1]) for p in ckpt.listed(tmp_path)]
    newest = list(range(7 - keep, 7))
    assert kept == [2, *newest], f"keep={keep}: the best (2) and the {keep} newest, got {kept}"
    assert weight(tmp_path / "best.pt") == 2.0 and weight(tmp_path / "last.pt") == 6.0


def test_an_old_best_epoch_file_goes_once_a_newer_best_replaces_it(tmp_path: Path) -> None:
    for epoch in range(1, 5):
        ckpt.save(tmp_path, epoch, state(float(epoch)), is_best=epoch in (1, 4), keep=1)
    assert [p.name for p in ckpt.listed(tmp_path)] == ["epoch_0004.pt"], "epoch 1 is best no more"
    assert weight(tmp_path / "best.pt") == 4.0


def test_a_save_that_fails_midway_leaves_last_and_best_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt.save(tmp_path, 1, state(1.0), is_best=True, keep=None)
    real_save = torch.save

    def half_then_fail(obj: object, fh: object) -> None:
        real_save(obj, fh)
        fh.truncate(10)  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save(tmp_path, 2, state(2.0), is_best=True, keep=None)
    monkeypatch.undo()
    assert not ckpt.epoch_path(tmp_path, 2).exists(), "a half-written epoch is never renamed in"
    assert not list(tmp_path.glob(".*.tmp")), "the half-written temp file is removed, not left"
    assert ckpt.load(tmp_path / "last.pt")["epoch"] == 1, "last still points at the whole epoch"
    assert ckpt.load(tmp_path / "best.pt")["epoch"] == 1


def test_links_fall_back_to_copies_where_hard_links_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(src: object, dst: object) -> None:
        raise OSError("hard links not supported")

    monkeypatch.setattr(ckpt.os, "link", no_links)
    ckpt.save(tmp_path, 1, state(1.0), is_best=True, keep=None)
    ckpt.save(tmp_path, 2, state(2.0), is_best=False, keep=None)
    assert weight(tmp_path / "last.pt") == 2.0 and weight(tmp_path / "best.pt") == 1.0
    assert not list(tmp_path.glob(".*.tmp")), "no temp files left behind"


def test_last_and_best_are_the_epoch_file_itself_not_a_copy(tmp_path: Path) -> None:
    path = ckpt.save(tmp_path, 1, state(1.0), is_best=True, keep=None)
    assert (tmp_path / "last.pt").samefile(path) and (tmp_path / "best.pt").samefile(path)
    assert os.stat(path).st_nlink == 3, "one file, three names: no checkpoint stored twice"


def test_a_missing_checkpoint_is_named(tmp_path: Path) -> None:
    with pytest.raises(ckpt.CheckpointError, match=r"checkpoint not found: .*nothing\.pt"):
        ckpt.load(tmp_path / "nothing.pt")
    with pytest.raises(ckpt.CheckpointError, match="checkpoint not found"):
        ckpt.load(tmp_path)  # a folder is not a checkpoint


def test_a_truncated_checkpoint_is_refused_as_damaged(tmp_path: Path) -> None:
    path = ckpt.save(tmp_path, 1, state(1.0), is_best=False, keep=None)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ckpt.CheckpointError, match="not a plain-tensor checkpoint or is damaged"):
        ckpt.load(path)


def test_a_file_that_is_not_a_checkpoint_at_all_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.pt"
    path.write_text("epoch 3 was the best")
    with pytest.raises(ckpt.CheckpointError, match="damaged") as info:
        ckpt.load(path)
    assert info.value.__cause__ is not None, "the loader's own error is chained"


@pytest.mark.parametrize(
    "foreign",
    [
        {"format": ckpt.FORMAT + 1, "model": {}},  # a newer format
        {"model": {"w": torch.zeros(1)}},  # a bare state dict: no format at all
        torch.zeros(3),  # not a dict
    ],
    ids=["other-format", "no-format", "bare-tensor"],
)
def test_a_foreign_checkpoint_is_refused_with_the_format_it_needs(
    tmp_path: Path, foreign: object
) -> None:
    path = tmp_path / "foreign.pt"
    torch.save(foreign, path)
    with pytest.raises(
        ckpt.CheckpointError, match=f"not a skin checkpoint of format {ckpt.FORMAT}"
    ):
        ckpt.load(path)


def test_listed_on_a_missing_folder_is_empty_and_ignores_other_files(tmp_path: Path) -> None:
    assert ckpt.listed(tmp_path / "none") == []
    ckpt.save(tmp_path, 1, state(1.0), is_best=True, keep=None)
    (tmp_path / "epoch_x.pt").write_bytes(b"")
    (tmp_path / "epoch_0002.pt.bak").write_bytes(b"")
    assert [p.name for p in ckpt.listed(tmp_path)] == ["epoch_0001.pt"]


def test_loads_map_tensors_to_the_cpu(tmp_path: Path) -> None:
    path = ckpt.save(tmp_path, 1, state(1.0), is_best=False, keep=None)
    assert ckpt.load(path, map_location="cpu")["model"]["w"].device.type == "cpu"
