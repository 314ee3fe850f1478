"""skin.train.datasets: cache-backed datasets, the (seed, epoch) sampler and loader, device normalisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from skin.base.config import AugmentConfig
from skin.data.imagecache import ImageCache
from skin.train import datasets as skdata
from skin.train.datasets import (
    EpochSampler,
    EvalImages,
    Normalize,
    TrainImages,
    default_workers,
    make_loader,
    set_epoch,
)
from skin.train.features import FeatureSet
from skin.train.model import InputSpec

SIDE = 12


def cache(tmp_path: Path, n: int = 10) -> ImageCache:
    """n images whose every pixel says which row it is and where it sits (row, y, x)."""
    images = np.zeros((n, SIDE, SIDE, 3), dtype=np.uint8)
    images[..., 0] = np.arange(n)[:, None, None]
    images[..., 1] = np.arange(SIDE)[None, :, None]
    images[..., 2] = np.arange(SIDE)[None, None, :]
    keys = np.array([f"k{i:03d}.jpg" for i in range(n)], dtype=object)
    return ImageCache(tmp_path, images, np.ones(n, bool), pd.DataFrame(columns=["key"]), keys)


def indices(n: int, labels: np.ndarray | None = None) -> FeatureSet:
    """A dataset whose sample i is the number i: batches show the order directly."""
    labels = np.zeros(n, dtype=np.int64) if labels is None else labels
    return FeatureSet(torch.arange(n, dtype=torch.float32)[:, None], labels)


def test_eval_images_serve_the_centre_crop_of_each_row_in_the_order_asked(tmp_path: Path) -> None:
    rows = np.array([7, 2, 9, 4])
    ds = EvalImages(cache(tmp_path), rows, np.array([3, 1, 0, 2]), 8)
    x, y = ds.__getitems__([2, 0, 3, 0])  # unsorted, with a repeat (a padded epoch)
    assert x.dtype == torch.uint8 and x.shape == (4, 3, 8, 8), "uint8 NCHW"
    assert x[:, 0, 0, 0].tolist() == [9, 7, 4, 7], "each image is its own row's"
    assert y.tolist() == [0, 3, 2, 3] and y.dtype == torch.long
    assert x[0, 1, :, 0].tolist() == list(range(2, 10)), "the centre crop: offset (12 - 8) // 2"
    one, label = ds[2]
    assert torch.equal(one, x[0]) and label == 0, "one item is a batch of one"
    assert len(ds) == 4


def test_train_images_are_augmented_copies_never_the_cache_itself(tmp_path: Path) -> None:
    c = cache(tmp_path)
    before = c.images.copy()
    aug = AugmentConfig(enabled=True, backend="workers", color_jitter=0.5, scale_min=0.5)
    ds = TrainImages(c, np.array([5, 6]), np.array([1, 2]), 8, aug)
    torch.manual_seed(0)
    x, y = ds[1]
    assert x.shape == (3, 8, 8) and x.dtype == torch.uint8 and y == 2
    assert x.is_contiguous(), "rot90 views are made contiguous for pinning and collation"
    assert np.array_equal(c.images, before), "augmentation never writes into the cache"
    assert len(ds) == 2


def test_train_images_without_augmentation_options_keep_the_crop_only(tmp_path: Path) -> None:
    aug = AugmentConfig(enabled=True, flips=False, rotate90=False, color_jitter=0.0)
    ds = TrainImages(cache(tmp_path), np.array([3]), np.array([0]), 8, aug)
    names = [type(t).__name__ for t in ds.transform.transforms]
    assert names == ["RandomResizedCrop"] and not ds.rotate90, names
    x, _ = ds[0]
    assert (x[0] == 3).all(), "colour untouched without jitter: the red channel is still row 3"


@pytest.mark.parametrize(
    ("device", "per_image", "cpus", "want"),
    [
        ("cuda", False, 16, 8),
        ("cuda", True, 4, 3),
        ("cuda", False, 1, 1),
        ("cpu", True, 16, 2),
        ("cpu", True, 1, 1),
        ("cpu", False, 16, 0),
    ],
)
def test_default_workers_by_device_and_augmentation(
    monkeypatch: pytest.MonkeyPatch, device: str, per_image: bool, cpus: int, want: int
) -> None:
    monkeypatch.setattr(skdata, "cpu_workers", lambda: cpus)
    assert default_workers(per_image, torch.device(device)) == want


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rank": 2, "world": 2}, "rank 2 is not in a world of 2 processes"),
        ({"rank": 0, "world": 0}, "rank 0 is not in a world of 0 processes"),
        ({"weights": np.ones(4)}, "4 sampling weights for 5 samples"),
        ({"blocks": np.zeros(6, int)}, "6 shard numbers for 5 samples"),
    ],
)
def test_the_sampler_refuses_inconsistent_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EpochSampler(5, seed=0, epoch=0, shuffle=True, **kwargs)


def test_an_unshuffled_order_is_the_data_order_whatever_the_shards() -> None:
    s = EpochSampler(6, seed=1, epoch=3, shuffle=False, blocks=np.array([2, 2, 1, 1, 0, 0]))
    assert list(s) == list(range(6)), "evaluation sees every sample in manifest order"
    assert list(EpochSampler(0, seed=1, epoch=0, shuffle=True)) == []


def test_a_shuffled_order_is_a_permutation_fixed_by_seed_and_epoch() -> None:
    def order(seed: int, epoch: int) -> list[int]:
        return list(EpochSampler(50, seed=seed, epoch=epoch, shuffle=True))

    a = order(4, 1)
    assert sorted(a) == list(range(50)) and a != list(range(50))
    assert order(4, 1) == a, "resuming replays the same order"
    assert order(4, 2) != a and order(5, 1) != a, "another epoch or seed, another order"


def test_weighted_draws_never_pick_a_zero_weight_sample() -> None:
    weights = np.array([0.0, 1.0, 0.0, 1.0, 1.0])
    draws = [
        list(EpochSampler(5, seed=0, epoch=e, shuffle=True, weights=weights)) for e in range(20)
    ]
    assert all(len(d) == 5 for d in draws), "one epoch is n draws, with replacement"
    drawn = {i for d in draws for i in d}
    assert drawn == {1, 3, 4}, sorted(drawn)


@pytest.mark.parametrize(("n", "world", "length"), [(10, 1, 10), (10, 3, 4), (2, 4, 1)])
def test_every_rank_runs_the_same_number_of_samples(n: int, world: int, length: int) -> None:
    per_rank = [
        list(EpochSampler(n, seed=0, epoch=0, shuffle=True, rank=r, world=world))
        for r in range(world)
    ]
    assert all(len(p) == length for p in per_rank), per_rank
    assert set().union(*per_rank) == set(range(n)), "padding repeats samples, never drops one"


def test_balanced_loading_draws_the_classes_evenly() -> None:
    labels = np.array([0] * 90 + [1] * 10)
    seen = []
    for epoch in range(10):
        loader = make_loader(
            indices(100, labels),
            batch_size=25,
            shuffle=True,
            seed=0,
            epoch=epoch,
            balanced=True,
            labels=labels,
        )
        seen += [int(i) for x, _ in loader for i in x[:, 0]]
    minority = np.isin(seen, np.arange(90, 100)).mean()
    assert 0.4 < minority < 0.6, f"class 1 is 10% of the data and {minority:.0%} of the draws"
    with pytest.raises(ValueError, match="balanced sampling needs the labels"):
        make_loader(indices(4), batch_size=2, shuffle=True, seed=0, balanced=True)


def test_a_loader_batches_the_order_of_its_seed_and_epoch() -> None:
    loader = make_loader(indices(10), batch_size=4, shuffle=True, seed=9, epoch=2)
    batches = [x[:, 0].long().tolist() for x, _ in loader]
    assert [len(b) for b in batches] == [4, 4, 2], "the last batch is kept, not dropped"
    order = EpochSampler(10, seed=9, epoch=2, shuffle=True).order().tolist()
    assert [i for b in batches for i in b] == order


def test_a_batched_dataset_arrives_as_one_tensor_per_batch(tmp_path: Path) -> None:
    ds = EvalImages(cache(tmp_path), np.arange(10), np.arange(10) % 8, 8)
    x, y = next(iter(make_loader(ds, batch_size=4, shuffle=False, seed=0)))
    assert x.shape == (4, 3, 8, 8) and x.dtype == torch.uint8 and y.tolist() == [0, 1, 2, 3]


def test_set_epoch_moves_the_order_and_refuses_foreign_loaders() -> None:
    loader = make_loader(indices(20), batch_size=20, shuffle=True, seed=1, epoch=1)
    assert set_epoch(loader, 5) is loader
    got = next(iter(loader))[0][:, 0].long().tolist()
    assert got == EpochSampler(20, seed=1, epoch=5, shuffle=True).order().tolist()
    with pytest.raises(TypeError, match="set_epoch needs a loader made by make_loader"):
        set_epoch(DataLoader(indices(4)), 1)


def test_normalize_maps_uint8_to_the_models_statistics() -> None:
    spec = InputSpec(4, (0.5, 0.25, 0.0), (0.5, 0.25, 1.0), "bicubic", 1.0)
    x = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    x[:, 0], x[:, 1], x[:, 2] = 255, 0, 51
    out = Normalize(spec)(x)
    assert out.dtype == torch.float32
    assert torch.allclose(out[:, 0], torch.tensor(1.0)), "(1 - 0.5) / 0.5"
    assert torch.allclose(out[:, 1], torch.tensor(-1.0)), "(0 - 0.25) / 0.25"
    assert torch.allclose(out[:, 2], torch.tensor(0.2)), "(0.2 - 0) / 1"
    last = Normalize(spec, channels_last=True)(x)
    assert last.is_contiguous(memory_format=torch.channels_last) and torch.equal(last, out)
