"""The shard tasks: a plan sized by the model's input and the shared prefix, one task per shard
(a second build reuses each), then the index that makes the cache complete."""

from __future__ import annotations

from pathlib import Path

import pytest

from skin.data import manifest as mf
from skin.data.shards import shards_uri
from skin.data.stages import manifest_ref
from skin.train.model import build_model, input_spec
from tasks.shards import build_shard_task, finish_shards_task, shard_plan
from tests.helpers import make_manifest

ROWS = 128  # images per shard: the sample data's 320 make three, the last one short


def test_the_plan_refuses_a_config_without_a_shared_uri(tmp_path: Path, sample_data) -> None:
    uri, cfg = make_manifest(tmp_path, sample_data)
    with pytest.raises(ValueError, match=r"shared\.uri"):
        shard_plan(uri, cfg)


def test_the_plan_counts_the_shards_at_the_models_cache_size(tmp_path: Path, sample_data) -> None:
    shared = str(tmp_path / "shared")
    uri, cfg = make_manifest(
        tmp_path, sample_data, **{"shared.uri": shared, "shared.shard_rows": ROWS}
    )
    plan = shard_plan(uri, cfg)
    manifest = mf.read(uri)
    model = build_model(cfg.model.name, len(cfg.data.classes), pretrained=False)
    size = input_spec(model, cfg.train.image_size).cache_size
    assert plan["size"] == size and plan["count"] == len(manifest) == 320, plan
    assert plan["shards"] == 3 and plan["shard_rows"] == ROWS, plan
    assert plan["uri"] == shards_uri(shared, manifest, size), "under shared.uri, by content"


def test_each_shard_is_one_task_and_the_index_comes_last(tmp_path: Path, sample_data) -> None:
    uri, cfg = make_manifest(
        tmp_path, sample_data, **{"shared.uri": str(tmp_path / "shared"), "shared.shard_rows": ROWS}
    )
    plan, ref, fetch = shard_plan(uri, cfg), manifest_ref(uri), str(tmp_path / "fetch")

    def build(index: int):
        return build_shard_task.fn(ref, plan["size"], index, ROWS, plan["uri"], fetch)

    built = [build(i) for i in range(plan["shards"])]
    assert [b.rows for b in built] == [128, 128, 64] and not any(b.reused for b in built), built
    assert not (Path(plan["uri"]) / "meta.json").exists(), "no index before finish: incomplete"
    meta = finish_shards_task.fn(plan["uri"], plan["count"], plan["size"], ROWS)
    assert meta["count"] == 320 and meta["bad"] == 0, meta
    assert (Path(plan["uri"]) / "meta.json").is_file()
    assert all(build(i).reused for i in range(plan["shards"])), "a built shard is kept"
