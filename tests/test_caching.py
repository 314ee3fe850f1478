"""Cache keys (tasks/caching.py): made of content, the config entries a stage reads, and code."""

from __future__ import annotations

from pathlib import Path

import pytest

from skin.config import ConfigError, config_digest, load_config
from skin.datastages import ManifestRef
from tasks.caching import file_hash, keyed_on


def key_fn(*params: str, **kwargs):
    policy = keyed_on(*params, **kwargs)
    fn = next(p for p in policy.policies if hasattr(p, "cache_key_fn")).cache_key_fn
    return lambda **inputs: fn(None, inputs)


def test_key_follows_file_content_not_its_path(tmp_path: Path) -> None:
    key = key_fn(files=("checkpoint",))
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"epoch 3")
    first = key(checkpoint=str(ckpt))
    ckpt.write_bytes(b"epoch 7")
    assert key(checkpoint=str(ckpt)) != first, "same path, other weights: another key"
    copy = tmp_path / "copy.pt"
    copy.write_bytes(b"epoch 7")
    assert key(checkpoint=str(copy)) == key(checkpoint=str(ckpt)), "same content: same key"
    assert file_hash(tmp_path / "missing.pt") is None


def test_key_reads_only_the_config_entries_named() -> None:
    key = key_fn(config_sections=("train.image_size", "evaluate"))
    base = load_config(None, {"model.name": "test_resnet"})
    assert key(config=base) != key(config=base.model_copy(
        update={"train": base.train.model_copy(update={"image_size": 40})}))  # fmt: skip
    other_lr = base.model_copy(update={"train": base.train.model_copy(update={"lr": 0.5})})
    assert key(config=base) == key(config=other_lr), "an entry the stage does not read"


def test_key_on_an_attribute_of_a_reference() -> None:
    key = key_fn("manifest.hash")
    a = ManifestRef(uri="/a/manifest-1.parquet", hash="abc", dataset="d", images=3)
    b = ManifestRef(uri="/b/other.parquet", hash="abc", dataset="d", images=3, previous_uri="x")
    c = ManifestRef(uri="/a/manifest-1.parquet", hash="def", dataset="d", images=3)
    assert key(manifest=a) == key(manifest=b), "content, not lineage or path"
    assert key(manifest=a) != key(manifest=c)


def test_config_digest_names_a_missing_entry() -> None:
    cfg = load_config(None, {"model.name": "test_resnet"})
    assert config_digest(cfg, ("split.seed",)) != config_digest(
        cfg.model_copy(update={"split": cfg.split.model_copy(update={"seed": 1})}), ("split.seed",)
    )
    with pytest.raises(ConfigError, match=r"split\.sede"):
        config_digest(cfg, ("split.sede",))
