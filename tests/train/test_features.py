"""Backbone features cached beside the image cache: each key keeps its own image's features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

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


def test_the_audit_embedder_gives_unit_vectors_and_zeros_for_unreadable_images() -> None:
    from skin.data.synthetic import render_lesion
    from skin.train.features import image_embedder
    from skin.train.model import build_model, input_spec

    torch.manual_seed(0)
    net = build_model("test_resnet", 1, pretrained=False)
    spec = input_spec(net, 32)
    rng = np.random.default_rng(0)
    pictures = {k: np.asarray(render_lesion("MEL", rng, size=48)) for k in ("a", "b")}
    pictures["a2"] = pictures["a"].copy()

    def load(keys: list[str], side: int) -> list[np.ndarray | None]:
        return [
            np.asarray(Image.fromarray(pictures[k]).resize((side, side))) if k in pictures else None
            for k in keys
        ]

    out = image_embedder(net, spec, load)(["a", "a2", "b", "gone"])
    assert out.shape == (4, net.num_features)
    assert np.allclose(np.linalg.norm(out[:3], axis=1), 1, atol=1e-5)
    assert float(out[0] @ out[1]) == pytest.approx(1.0, abs=1e-5), "one image, one embedding"
    assert not out[3].any(), "an unreadable image confirms nothing"
