"""Datasets and loaders over the decoded-image cache; normalisation happens on the device."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

from skin.base.config import AugmentConfig
from skin.data.imagecache import ImageCache, cpu_workers
from skin.data.images import centre_crop
from skin.train.model import InputSpec


class EvalImages(Dataset):
    """Centre-cropped uint8 images, fetched a whole batch at a time straight from the memmap."""

    def __init__(self, cache: ImageCache, rows: np.ndarray, labels: np.ndarray, size: int) -> None:
        self.cache, self.rows, self.labels, self.size = (
            cache,
            np.asarray(rows),
            np.asarray(labels),
            size,
        )

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, y = self.__getitems__([i])
        return x[0], int(y[0])

    def __getitems__(self, idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(idx)
        rows = self.rows[idx]
        order = np.argsort(rows)  # sorted reads are sequential on disk
        batch = np.empty((len(rows), self.size, self.size, 3), dtype=np.uint8)
        batch[order] = centre_crop(self.cache.images[rows[order]], self.size)
        x = torch.from_numpy(batch).permute(0, 3, 1, 2)
        return x, torch.as_tensor(self.labels[idx], dtype=torch.long)


class TrainImages(Dataset):
    """Per-image augmentation for dermoscopy: orientation carries no meaning, colour a little."""

    def __init__(
        self, cache: ImageCache, rows: np.ndarray, labels: np.ndarray, size: int, aug: AugmentConfig
    ) -> None:
        self.cache, self.rows, self.labels = cache, np.asarray(rows), np.asarray(labels)
        ops: list[v2.Transform] = [
            v2.RandomResizedCrop(size, scale=(aug.scale_min, 1.0), antialias=True)
        ]
        if aug.flips:
            ops += [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]
        if aug.color_jitter > 0:
            j = aug.color_jitter
            ops.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j, hue=min(j / 4, 0.5)))
        self.transform = v2.Compose(ops)
        self.rotate90 = aug.rotate90

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = torch.from_numpy(np.array(self.cache.images[self.rows[i]])).permute(
            2, 0, 1
        )  # a writable copy
        x = self.transform(x)
        if self.rotate90:
            x = torch.rot90(x, int(torch.randint(4, ())), dims=(1, 2))
        return x.contiguous(), int(self.labels[i])


def _passthrough(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return batch


def default_workers(per_image_augment: bool, device: torch.device) -> int:
    """Worker processes for a training loader.

    On a GPU, workers read (and, per image, augment) the next batches while the GPU steps, so
    reads never stall it. On a CPU the workers would take cores from the step itself: batched
    memmap reads and batched augmentation are cheap enough in the main process; only the
    per-image torchvision path needs them.
    """
    cpus = cpu_workers()
    if device.type == "cuda":
        return min(8, max(1, cpus - 1))
    return min(2, max(1, cpus - 1)) if per_image_augment else 0


class EpochSampler(Sampler[int]):
    """One global order per (seed, epoch), shared by every rank; rank r takes positions r, r+W, …

    With a per-rank batch of B/W, global batch k is positions [kB, (k+1)B) of the order whatever
    the number of processes W, so a W-process run takes the same steps as one process with batch
    B. The order is padded (wrapping) to a multiple of W so every rank runs as many batches.
    """

    def __init__(
        self,
        n: int,
        *,
        seed: int,
        epoch: int,
        shuffle: bool,
        weights: np.ndarray | None = None,
        rank: int = 0,
        world: int = 1,
        blocks: np.ndarray | None = None,
        window: int = 1,
    ) -> None:
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in a world of {world} processes")
        if weights is not None and len(weights) != n:
            raise ValueError(f"{len(weights)} sampling weights for {n} samples")
        if blocks is not None and len(blocks) != n:
            raise ValueError(f"{len(blocks)} shard numbers for {n} samples")
        self.n, self.seed, self.epoch, self.shuffle = n, seed, epoch, shuffle
        self.weights, self.rank, self.world = weights, rank, world
        self.blocks = (
            None if blocks is None else torch.as_tensor(np.asarray(blocks), dtype=torch.long)
        )
        self.window = max(1, window)

    def order(self) -> torch.Tensor:
        """The global order (before sharding): weighted draw, permutation or 0..n-1, padded."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.n == 0:
            return torch.empty(0, dtype=torch.long)
        if self.weights is not None:
            w = torch.as_tensor(self.weights, dtype=torch.float64)
            order = torch.multinomial(w, self.n, replacement=True, generator=gen)
        elif self.shuffle:
            order = torch.randperm(self.n, generator=gen)
        else:
            order = torch.arange(self.n)
        if self.blocks is not None and (self.shuffle or self.weights is not None):
            place = torch.randperm(int(self.blocks.max()) + 1, generator=gen)  # shard → its turn
            window = place[self.blocks[order]] // self.window
            order = order[torch.sort(window, stable=True).indices]
        total = len(self) * self.world
        if total > self.n:
            order = order.repeat(-(-total // self.n))[:total]
        return order

    def __iter__(self) -> Iterator[int]:
        yield from self.order()[self.rank :: self.world].tolist()

    def __len__(self) -> int:
        return -(-self.n // self.world)


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    epoch: int = 0,
    balanced: bool = False,
    labels: np.ndarray | None = None,
    num_workers: int = 0,
    pin_memory: bool = False,
    rank: int = 0,
    world: int = 1,
    blocks: np.ndarray | None = None,
    window: int = 1,
    persistent: bool = False,
) -> DataLoader:
    """A loader whose order depends only on (seed, epoch): resuming replays the same batches.

    `rank`/`world` shard the training order (see EpochSampler); they default to the whole set,
    because evaluation and feature extraction must see every sample on whichever rank runs them.

    `persistent` keeps the worker processes between epochs: call `set_epoch(loader, e)` before
    each epoch instead of making a new loader (restarting 8 workers every epoch cost a GPU run
    here a third of its throughput on a 12-batch epoch). Only for datasets without randomness
    of their own: workers seeded once would not replay an epoch's augmentations on resume.
    """
    weights = None
    if balanced:
        if labels is None:
            raise ValueError("balanced sampling needs the labels (make_loader(labels=…))")
        counts = np.bincount(labels)
        weights = 1.0 / counts[labels]
    sampler = EpochSampler(
        len(dataset),  # type: ignore[arg-type]
        seed=seed,
        epoch=epoch,
        shuffle=shuffle,
        weights=weights,
        rank=rank,
        world=world,
        blocks=blocks,
        window=window,
    )
    # Seeds the workers' augmentation: distinct per rank, so ranks don't draw the same crops.
    worker_seed = int(np.random.SeedSequence([seed % 2**64, epoch, rank]).generate_state(1)[0])
    batched = hasattr(dataset, "__getitems__")  # the dataset hands over whole batches
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        generator=torch.Generator().manual_seed(worker_seed),
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=persistent and num_workers > 0,
        collate_fn=_passthrough if batched else None,
        drop_last=False,
    )


def set_epoch(loader: DataLoader, epoch: int) -> DataLoader:
    """Point a (persistent) loader's EpochSampler at another epoch's order."""
    sampler = loader.sampler
    if not isinstance(sampler, EpochSampler):
        raise TypeError("set_epoch needs a loader made by make_loader")
    sampler.epoch = epoch
    return loader


# The 8 symmetries of the square (4 rotations, with and without a transpose): averaging over all
# of them makes test-time augmentation exactly invariant to flips and 90° turns of the input.
DIHEDRAL: tuple[tuple[int, bool], ...] = tuple((k, t) for t in (False, True) for k in range(4))


def dihedral_view(x: torch.Tensor, k: int, transpose: bool) -> torch.Tensor:
    """One symmetry of the square on NCHW images: optional transpose, then k quarter turns."""
    y = x.transpose(2, 3) if transpose else x
    return torch.rot90(y, k, dims=(2, 3)) if k else y


class Normalize(torch.nn.Module):
    """uint8 NCHW on the device → normalised float (4× less to move than float32 images)."""

    def __init__(self, spec: InputSpec, channels_last: bool = False) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1) * 255.0)
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
