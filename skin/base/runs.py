"""The run folder's layout: every file a training or evaluation run keeps under `work_dir/runs/`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunPaths:
    """Where one run's files live: `work_dir/runs/<run_id>/…` (one folder per MLflow run)."""

    work_dir: Path | str
    run_id: str

    @property
    def root(self) -> Path:
        return Path(self.work_dir) / "runs" / self.run_id

    @property
    def checkpoints(self) -> Path:
        """Epoch checkpoints with their `last.pt` and `best.pt` links (skin.train.checkpoint writes them)."""
        return self.root / "checkpoints"

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def config(self) -> Path:
        """The resolved config the run trained with; evaluation starts from it."""
        return self.root / "config.yaml"

    @property
    def manifest(self) -> Path:
        """The manifest the run trained on (the default evaluation input)."""
        return self.root / "manifest.parquet"

    @property
    def outcome(self) -> Path:
        """Written last by a finished training: its absence means the training did not end."""
        return self.root / "train_outcome.json"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def bad_images(self) -> Path:
        return self.root / "bad_images.csv"

    @property
    def split_counts(self) -> Path:
        return self.root / "split_counts.csv"

    @property
    def onnx(self) -> Path:
        """The model as ONNX (logits from normalised input), when tracking.export_onnx is on."""
        return self.root / "model.onnx"

    @property
    def skipped_objects(self) -> Path:
        """Every object the listing left out of this run's data, with the reason."""
        return self.root / "skipped_objects.csv"

    @property
    def launch_config(self) -> Path:
        """The config handed to torchrun; not `config`, which rank 0 rewrites."""
        return self.root / "launch-config.yaml"

    @property
    def launch_log(self) -> Path:
        return self.root / "launch.log"


def cache_root(work_dir: Path | str) -> Path:
    """This machine's caches (fetched objects, decoded images, features), shared by every run."""
    return Path(work_dir) / "cache"


def run_pointer(work_dir: Path | str, train_key: str) -> Path:
    """Where a training attempt records its run id by key, so a crashed attempt is resumed."""
    return Path(work_dir) / "runs" / "by-key" / f"{train_key}.json"
