"""skin.train.feeds: which cache rows each split serves, and the two feeds `fit` trains on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from skin.base.config import AugmentConfig, PipelineConfig, TrainConfig
from skin.data.imagecache import ImageCache
from skin.train.datasets import EvalImages, TrainImages
from skin.train.distributed import World
from skin.train.features import HeadOnFeatures
from skin.train.feeds import (
    Placement,
    SplitImages,
    feature_feeds,
    image_feeds,
    index_splits,
    place_model,
)
from skin.train.model import build_model
from tests.helpers import SIZE, cache_manifest, plain_spec, with_splits, write_data

CPU = Placement(torch.device("cpu"), channels_last=False, dtype=None)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three images per class, and one file that is not an image."""
    root = tmp_path_factory.mktemp("feeds") / "data"
    write_data(str(root))
    (root / "NV" / "broken.jpg").write_bytes(b"not an image")
    return root


def manifest(data: Path) -> pd.DataFrame:
    return with_splits(cache_manifest(str(data)))


def test_each_split_serves_its_usable_kept_rows_with_class_indices(
    tmp_path: Path, data: Path
) -> None:
    m = manifest(data)
    cfg = PipelineConfig(work_dir=str(tmp_path))
    found = index_splits(m, cfg, plain_spec(SIZE))
    assert "NV/broken.jpg" in set(m["key"]) and not m["keep"].all(), "both exclusions occur"
    usable = m["key"] != "NV/broken.jpg"
    classes = cfg.data.known_classes
    assert found.classes == classes
    for split in ("train", "dev", "test"):
        want = m[(m["split"] == split) & usable & (m["keep"] | (split != "train"))]
        keys = found.cache.keys[found.rows[split]]
        assert list(keys) == list(want["key"]), f"{split}: manifest order, kept, decodable"
        labels = [classes[i] for i in found.labels[split]]
        assert labels == list(want["label"]), f"{split}: indices into the known classes"
        assert found.labels[split].dtype == np.int64
    served = {k for rows in found.rows.values() for k in found.cache.keys[rows]}
    assert "NV/broken.jpg" not in served, "an undecodable image is never served"
    assert found.unknown == {}, "no held-out class, nothing set apart"


def test_no_usable_dev_images_is_an_error_that_points_at_the_report(
    tmp_path: Path, data: Path
) -> None:
    m = manifest(data)
    m = m.assign(split=m["split"].replace("dev", "test"))
    with pytest.raises(ValueError, match=r"no usable train or dev images.*bad-image report"):
        index_splits(m, PipelineConfig(work_dir=str(tmp_path)), plain_spec(SIZE))


def fake_split(n_train: int = 10, n_dev: int = 6, side: int = 12) -> SplitImages:
    """A SplitImages over an in-memory cache: train rows first, then dev rows."""
    n = n_train + n_dev
    images = np.random.default_rng(0).integers(0, 256, (n, side, side, 3), dtype=np.uint8)
    keys = np.array([f"k{i:03d}" for i in range(n)], dtype=object)
    cache = ImageCache(Path("."), images, np.ones(n, bool), pd.DataFrame(columns=["key"]), keys)
    spec = plain_spec(8)
    found = SplitImages(cache, spec, ("AK", "BCC", "MEL", "NV"))
    found.rows = {"train": np.arange(n_train), "dev": np.arange(n_train, n)}
    found.labels = {"train": np.arange(n_train) % 4, "dev": np.arange(n_dev) % 4}
    return found


def test_place_model_keeps_cpu_runs_in_full_precision_and_plain_memory() -> None:
    model = build_model("test_resnet", 4, pretrained=False)
    place = place_model(model, torch.device("cpu"), TrainConfig(amp=True, channels_last=True))
    assert place == Placement(torch.device("cpu"), channels_last=False, dtype=None)
    assert next(model.parameters()).device.type == "cpu"


def test_the_feature_feed_trains_the_models_own_classifier_on_features() -> None:
    data = fake_split()
    model = build_model("test_resnet", 4, pretrained=False)
    feats = torch.arange(16, dtype=torch.float32)[:, None].repeat(1, model.num_features)
    train = TrainConfig(batch_size=4, seed=3)
    feeds = feature_feeds(model, feats, data, train, 0.0, torch.device("cpu"), World())
    assert isinstance(feeds.net, HeadOnFeatures) and feeds.net.classifier is model.get_classifier()
    assert feeds.steps == 3, "ceil(10 train samples / batch 4)"
    epoch = list(feeds.train_batches(1))
    served = sorted(int(v) for x, _ in epoch for v in x[:, 0])
    assert served == list(range(10)), "train features are the train rows, each once"
    assert [int(v) for x, _ in epoch for v in x[:, 0]] != [
        int(v) for x, _ in feeds.train_batches(2) for v in x[:, 0]
    ], "each epoch its own order"
    dev = [(x, y) for x, y in feeds.dev_batches()]
    assert [int(v) for x, _ in dev for v in x[:, 0]] == list(range(10, 16)), "dev in row order"
    assert torch.cat([y for _, y in dev]).tolist() == data.labels["dev"].tolist()
    x = torch.randn(2, 5)
    assert feeds.prep(x) is x and feeds.train_prep(x) is x, "features need no preparation"


def test_ranks_share_each_global_batch_in_the_feature_feed() -> None:
    data = fake_split(n_train=12)
    feats = torch.arange(18, dtype=torch.float32)[:, None]
    model = build_model("test_resnet", 4, pretrained=False)
    train = TrainConfig(batch_size=4, seed=1, nproc=2)
    rank_feeds = [
        feature_feeds(model, feats.repeat(1, model.num_features), data, train, 0.0,
                      torch.device("cpu"), World(rank=r, size=2))
        for r in (0, 1)
    ]  # fmt: skip
    assert [f.steps for f in rank_feeds] == [3, 3], "12 samples, global batch 4: 3 steps each"
    sizes = [[len(y) for _, y in f.train_batches(1)] for f in rank_feeds]
    assert sizes == [[2, 2, 2], [2, 2, 2]], "each rank takes half of every global batch"


@pytest.mark.parametrize(
    ("augment", "dataset", "side"),
    [
        (AugmentConfig(enabled=False), EvalImages, 8),
        (AugmentConfig(enabled=True, backend="device"), EvalImages, 12),
        (AugmentConfig(enabled=True, backend="workers"), TrainImages, 8),
    ],
    ids=["none", "device", "workers"],
)
def test_the_image_feed_picks_where_images_are_cropped_and_augmented(
    augment: AugmentConfig, dataset: type, side: int
) -> None:
    data = fake_split()
    model = build_model("test_resnet", 4, pretrained=False)
    train = TrainConfig(batch_size=4, num_workers=0, augment=augment, compile=False)
    feeds = image_feeds(model, data, train, 1, CPU, World())
    assert feeds.net is model and feeds.steps == 3
    loader = feeds.train_batches(1)
    assert isinstance(loader.dataset, dataset), type(loader.dataset)
    x, _ = next(iter(loader))
    assert x.dtype == torch.uint8 and x.shape[-2:] == (side, side), "uint8 to the device"
    prepared = feeds.train_prep(x)
    assert prepared.dtype == torch.float32 and prepared.shape[-2:] == (8, 8), (
        "the model's input size: whole cached images are cropped on the device"
    )
    dev_x, dev_y = next(iter(feeds.dev_batches()))
    assert dev_x.shape[-2:] == (8, 8) and dev_y.tolist() == data.labels["dev"][:4].tolist()
    want = (dev_x.float() - 127.5) / 63.75  # plain_spec: mean 0.5, std 0.25
    assert torch.allclose(feeds.prep(dev_x), want), "prep is the normalisation alone"


def test_the_image_feed_sets_train_mode_keeping_frozen_batchnorm_still() -> None:
    from skin.train.model import apply_freeze

    data = fake_split()
    model = build_model("test_resnet", 4, pretrained=False)
    apply_freeze(model, "head")
    feeds = image_feeds(model, data, TrainConfig(batch_size=4, num_workers=0), 1, CPU, World())
    model.eval()
    feeds.set_mode()
    assert model.training and not model.bn1.training, "frozen BN statistics must not drift"
