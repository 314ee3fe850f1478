"""The audit stage on a generated folder with planted copies and unusable images: what it finds,
that the split keeps every cluster together, that an earlier manifest's leaks are reported, and
that the store is only read."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from PIL import Image

from skin.base.config import AuditConfig, DataConfig, SplitConfig
from skin.data import manifest as mf
from skin.data.audit import AuditRef, _scan_one, load_audit, read_findings_table
from skin.data.leaks import cross_split_pairs, leaked_keys
from skin.data.location import DatasetState
from skin.data.stages import (
    ListingRef,
    audit_against,
    audit_listing,
    list_images,
    save_listing,
    save_manifest,
    source_uri,
    split_images,
    split_input,
)
from skin.data.synthetic import encode_jpeg
from tests.helpers import planted_images, png_bomb


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple[str, str]]]:
    """A class-folder dataset: 80 distinct lesions, 12 planted copies (2 of each kind), a black
    and a tiny image."""
    root = tmp_path_factory.mktemp("planted")
    images, truth = planted_images(per_class=10, copies_per_kind=2, size=96)
    for s in images:
        (root / s.label).mkdir(exist_ok=True)
        (root / s.label / f"{s.image_id}.jpg").write_bytes(s.data)
    (root / "NV" / "BLACK.jpg").write_bytes(encode_jpeg(Image.new("RGB", (96, 96), (2, 2, 2))))
    tiny = Image.new("RGB", (40, 40), (150, 90, 70))
    (root / "NV" / "TINY.jpg").write_bytes(encode_jpeg(tiny))
    return root, truth


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _audit(tmp_path: Path, data: Path) -> tuple[DataConfig, ListingRef, AuditRef]:
    """List and audit with the sections alone (a whole config would import timm: seconds)."""
    cfg, work = DataConfig(uri=str(data)), str(tmp_path / "work")
    listing = save_listing(list_images(cfg), DatasetState(work, cfg.uri))
    return cfg, listing, audit_listing(listing, cfg, AuditConfig(), work, work)


def test_the_audit_finds_planted_copies_and_unusable_images_and_only_reads_the_store(
    planted: tuple[Path, dict], tmp_path: Path
) -> None:
    data, truth = planted
    before = _snapshot(data)
    _, _, ref = _audit(tmp_path, data)
    assert _snapshot(data) == before, "the audit changed the store"
    pairs = read_findings_table(ref, "pairs")
    stem = lambda k: Path(k).stem  # noqa: E731
    found = {
        frozenset((stem(a), stem(b))) for a, b in zip(pairs["key_a"], pairs["key_b"], strict=True)
    }
    planted_pairs = {frozenset((c, o)) for c, (o, _) in truth.items()}
    assert planted_pairs <= found, f"missed: {planted_pairs - found}"
    assert len(found - planted_pairs) <= 1, f"unplanted pairs: {found - planted_pairs}"
    clusters = read_findings_table(ref, "clusters")
    assert set(clusters.columns) >= {"key", "cluster", "size", "similarity", "rules"}
    unusable = read_findings_table(ref, "unusable").groupby("key")["reason"].agg(set)
    assert "almost black" in unusable["NV/BLACK.jpg"] and "tiny" in unusable["NV/TINY.jpg"]
    assert load_audit(ref.uri) == ref, "the reference round-trips"
    summary = (Path(ref.uri) / "summary.md").read_text()
    assert f"near-duplicate pairs: {ref.pairs}" in summary and "Unusable images" in summary


def test_the_split_keeps_clusters_together_where_a_plain_split_leaked(
    planted: tuple[Path, dict], tmp_path: Path
) -> None:
    data, _ = planted
    cfg, listing, ref = _audit(tmp_path, data)
    split = SplitConfig(fractions=(0.4, 0.3, 0.3))
    source = source_uri(cfg.uri)
    grouped = split_images(split_input(listing, ref), source, split)
    mf.validate(grouped)  # raises if a cluster straddles splits
    assert grouped[mf.CLUSTER].notna().sum() == ref.clustered_images
    plain = split_images(split_input(listing, None), source, split)
    leaks = cross_split_pairs(plain, read_findings_table(ref, "pairs"))
    assert len(leaks) > 0, "the plain split put no planted copy across splits (pick another seed)"
    manifest = save_manifest(plain, DatasetState(str(tmp_path / "work"), cfg.uri), latest=False)
    report = audit_against(ref, manifest, cfg.known_classes)
    assert report.pairs == len(leaks)
    assert report.test_images_leaked == len(leaked_keys(leaks, "test"))
    assert cross_split_pairs(grouped, read_findings_table(ref, "pairs")).empty


def test_audit_settings_have_defaults_and_refuse_nonsense() -> None:
    assert AuditConfig().max_distance == 16 and AuditConfig().exclude == ()
    with pytest.raises(ValueError, match="exclude"):
        AuditConfig(exclude=("everything",))
    assert SplitConfig().group_by_lesion, "the lesion setting is unchanged"


def test_excluded_findings_leave_the_split_and_are_listed_with_why(
    planted: tuple[Path, dict], tmp_path: Path
) -> None:
    data, truth = planted
    cfg, work = DataConfig(uri=str(data)), str(tmp_path / "work")
    listing = save_listing(list_images(cfg), DatasetState(work, cfg.uri))
    reviewed = tmp_path / "reviewed.txt"
    reviewed.write_text("MEL/" + next(s for s in truth) + ".jpg\n")
    audit = AuditConfig(exclude=("near_duplicates", "unusable"), exclude_keys=str(reviewed))
    ref = audit_listing(listing, cfg, audit, work, work)
    out = read_findings_table(ref, "excluded")
    assert ref.excluded == len(out) >= len(truth) + 2, out
    why = dict(zip(out["key"], out["excluded_by"], strict=True))
    assert "unusable: tiny" in why["NV/TINY.jpg"] and "near_duplicates" in set(why.values())
    images = split_input(listing, ref)
    assert not set(out["key"]) & set(images["key"]), "excluded images reached the split"
    kept = images.dropna(subset=[mf.CLUSTER])
    assert kept.groupby(mf.CLUSTER).size().max() == 1, "one image per cluster is kept"
    assert "excluded from the split" in (Path(ref.uri) / "summary.md").read_text()


def test_an_image_too_large_to_open_is_unreadable_not_a_crash(tmp_path: Path) -> None:
    """A decompression bomb (a header claiming 30,000² pixels) is listed with its reason."""
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb())
    why = _scan_one(bomb, None, 64)
    assert isinstance(why, str) and "pixels" in why, why
