"""Backbone features cached beside the image cache: each key keeps its own image's features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from skin.base.config import PipelineConfig
from skin.data.images import decode
from skin.data.manifest import SPLITS
from skin.train.datasets import Normalize
from skin.train.features import extract
from skin.train.feeds import index_splits
from skin.train.model import build_model, pooled_features
from tests.helpers import (
    SIZE,
    cache_manifest,
    plain_spec,
    reordered,
    split_keys,
    with_splits,
    write_data,
)


@pytest.mark.parametrize("order", ["reversed", "shuffled"])
def test_a_reordered_manifest_gets_each_key_its_own_features(tmp_path: Path, order: str) -> None:
    data = tmp_path / "data"
    write_data(str(data), per_class=2)
    m = with_splits(cache_manifest(str(data)))
    cfg = PipelineConfig(work_dir=str(tmp_path / "work"))
    spec = plain_spec(SIZE)
    torch.manual_seed(0)
    model = build_model("test_resnet", 8, pretrained=False).eval()
    cpu = torch.device("cpu")
    first = index_splits(m, cfg, spec)
    feats = extract(model, first.cache, spec, cpu, batch_size=7, folder=first.cache.path)
    assert feats.shape[0] == len(m)
    stored = sorted(first.cache.path.glob("features-*.npy"))
    assert len(stored) == 1, "features are kept beside the image cache"

    other = reordered(m, order)
    again = index_splits(other, cfg, spec)
    reused = extract(model, again.cache, spec, cpu, folder=again.cache.path)
    assert sorted(again.cache.path.glob("features-*.npy")) == stored, "the features are reused"
    normalize = Normalize(spec)
    for split in SPLITS:
        keys = split_keys(other, split)["key"]
        for row, key in zip(again.rows[split], keys, strict=True):
            image = torch.from_numpy(np.array(decode((data / key).read_bytes(), SIZE)))
            own = pooled_features(model, normalize(image.permute(2, 0, 1)[None]))[0]
            assert torch.allclose(reused[row], own, atol=1e-4), f"{split}: {key} has other features"
