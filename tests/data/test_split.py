"""Splitting and undersampling as pure functions: sizes, determinism, growth, leakage, errors."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skin.base.labels import ISIC2019_COUNTS
from skin.data.balance import BalanceError, undersample
from skin.data.manifest import CLUSTER, SPLITS, ManifestError, validate
from skin.data.split import SplitError, SplitResult, split_report, split_with_moves
from tests.helpers import assign_splits


def make_images(counts: dict[str, int], start: int = 0, lesion_every: int = 0) -> pd.DataFrame:
    """Rows like a listing; with lesion_every=k, runs of k consecutive images share a lesion."""
    rows = []
    i = start
    for label, n in counts.items():
        for _ in range(n):
            lesion = f"L{label}{i // lesion_every}" if lesion_every else None
            rows.append(
                {
                    "key": f"{label}/ISIC_{i:07d}.jpg",
                    "label": label,
                    "fingerprint": f"f{i}",
                    "lesion_id": lesion,
                }
            )
            i += 1
    return pd.DataFrame(rows)


def with_split(df: pd.DataFrame, **kwargs) -> pd.DataFrame:
    out = df.copy()
    out["split"] = assign_splits(out, **kwargs).to_numpy()
    return out


@pytest.fixture(scope="module")
def isic() -> pd.DataFrame:
    return with_split(make_images(ISIC2019_COUNTS))


def test_isic_counts_hit_every_class_within_one_image(isic: pd.DataFrame) -> None:
    report = split_report(isic, (0.8, 0.1, 0.1))
    for label, n in ISIC2019_COUNTS.items():
        row = report.loc[label]
        assert row[["train", "dev", "test"]].sum() == n, f"{label}: images lost or duplicated"
        for split in ("dev", "test"):
            assert abs(row[split] - 0.1 * n) <= 1, f"{label} {split}: {row[split]} vs 10% of {n}"
        assert row["dev"] == row["dev_target"] and row["test"] == row["test_target"], row


def test_undersampling_on_isic_counts_matches_the_notebook(isic: pd.DataFrame) -> None:
    m = undersample(isic, "undersample", "NV", seed=1)
    kept = m[(m["split"] == "train") & m["keep"]].groupby("label").size()
    train = isic[isic["split"] == "train"].groupby("label").size()
    assert kept["NV"] == train["MEL"], f"NV kept {kept['NV']} should equal MEL's {train['MEL']}"
    assert kept.drop("NV").equals(train.drop("NV")), "only NV may be undersampled"
    assert m[m["split"] != "train"]["keep"].all(), "dev/test must keep their natural distribution"
    validate(m.assign(source="x"))
    none = undersample(isic, "none")
    assert none["keep"].all(), "strategy none keeps everything"


def test_undersampling_defaults_to_the_largest_class_and_is_seeded() -> None:
    df = with_split(make_images({"AK": 300, "BCC": 100, "NV": 20}))
    m = undersample(df, majority_class=None, seed=3)
    kept = m[(m["split"] == "train") & m["keep"]].groupby("label").size()
    assert kept["AK"] == kept["BCC"], f"largest class cut to the second: {kept.to_dict()}"
    again = undersample(df, majority_class=None, seed=3)
    other = undersample(df, majority_class=None, seed=4)
    assert m["keep"].equals(again["keep"]), "same seed, same kept set"
    assert not m["keep"].equals(other["keep"]), "another seed, another kept set"
    with pytest.raises(BalanceError, match="VASC"):
        undersample(df, majority_class="VASC")


def test_split_is_deterministic_for_a_seed() -> None:
    df = make_images({"AK": 120, "NV": 400, "MEL": 150}, lesion_every=3)
    a, b = with_split(df, seed=7), with_split(df, seed=7)
    c = with_split(df, seed=8)
    assert a["split"].equals(b["split"]), "same seed must give the same split"
    assert not a["split"].equals(c["split"]), "another seed must give another split"
    shuffled = df.sample(frac=1, random_state=0)
    d = with_split(shuffled, seed=7).set_index("key").loc[a["key"], "split"]
    assert (d.to_numpy() == a["split"].to_numpy()).all(), "row order must not change the split"


def test_growth_keeps_old_assignments_and_targets(isic: pd.DataFrame) -> None:
    added = make_images({k: v // 10 for k, v in ISIC2019_COUNTS.items()}, start=10**6)
    grown = with_split(
        pd.concat([isic.drop(columns="split"), added], ignore_index=True),
        previous=isic[["key", "split"]],
    )
    old = grown.set_index("key").loc[isic["key"], "split"]
    assert (old.to_numpy() == isic["split"].to_numpy()).all(), (
        "assigned images must keep their split"
    )
    report = split_report(grown, (0.8, 0.1, 0.1))
    for label, row in report.iterrows():
        for split in ("dev", "test"):
            assert abs(row[split] - row[f"{split}_target"]) <= 1, f"{label} {split} drifted: {row}"


def test_lesions_never_straddle_splits_and_sizes_stay_close() -> None:
    df = with_split(make_images({"AK": 200, "BCC": 300, "NV": 900}, lesion_every=4))
    per_lesion = df.groupby("lesion_id")["split"].nunique()
    assert (per_lesion == 1).all(), "all images of a lesion must share a split"
    report = split_report(df, (0.8, 0.1, 0.1))
    for label, row in report.iterrows():
        for split in ("dev", "test"):
            assert abs(row[split] - row[f"{split}_target"]) <= 4, f"{label}: {row.to_dict()}"
    validate(df.assign(keep=True, source="x"))


def test_new_image_of_a_known_lesion_follows_its_split() -> None:
    first = with_split(make_images({"AK": 50, "NV": 50}, lesion_every=5))
    lesion, split = first.iloc[0][["lesion_id", "split"]]
    newcomer = pd.DataFrame(
        [{"key": "AK/new.jpg", "label": "AK", "fingerprint": "new", "lesion_id": lesion}]
    )
    grown = with_split(
        pd.concat([first.drop(columns="split"), newcomer], ignore_index=True),
        previous=first[["key", "split"]],
    )
    assert grown.set_index("key").loc["AK/new.jpg", "split"] == split, "a lesion must not straddle"


def test_identical_files_never_straddle_even_across_classes() -> None:
    df = make_images({"AK": 100, "NV": 100})
    # 30 byte-identical copies, 10 of them filed under another class (a real ISIC trap).
    for i in range(30):
        j = 100 + i if i < 10 else i + 40
        df.loc[j, "fingerprint"] = df.loc[i, "fingerprint"]
    out = with_split(df)
    assert (out.groupby("fingerprint")["split"].nunique() == 1).all(), (
        "duplicates must share a split"
    )
    broken = out.copy()
    broken.loc[broken["fingerprint"] == broken.loc[0, "fingerprint"], "split"] = ["train", "test"]
    with pytest.raises(ManifestError, match="straddle"):
        validate(broken.assign(keep=True, source="x"))


def test_a_new_lesion_link_across_splits_moves_only_the_smaller_part() -> None:
    df = make_images({"AK": 60, "NV": 60}, lesion_every=2)
    df.loc[df.index // 2 % 2 == 1, "lesion_id"] = None  # lesions of 2 photos, and single photos
    first = with_split(df, seed=3)
    lesion = first[first["lesion_id"].notna() & (first["split"] == "dev")].iloc[0]
    loner = first[first["lesion_id"].isna() & (first["split"] == "train")].iloc[0]
    grown = first.drop(columns="split")
    grown.loc[grown["key"] == loner["key"], "lesion_id"] = lesion["lesion_id"]  # new metadata
    out = with_split(grown, seed=3, previous=first[["key", "split"]])
    validate(out.assign(keep=True, source="x"))  # no lesion straddles splits
    changed = out.set_index("key")["split"] != first.set_index("key")["split"]
    assert changed[changed].index.tolist() == [loner["key"]], "only the loner may move"
    assert out.set_index("key").loc[loner["key"], "split"] == "dev", "it joins its lesion's split"


def test_moves_are_reported_and_logged_by_the_split_stage(caplog: pytest.LogCaptureFixture) -> None:
    from skin.base.config import SplitConfig  # imports timm: only here
    from skin.data.stages import split_images

    first = with_split(make_images({"AK": 40, "NV": 40}), seed=1)
    test_key = first[first["split"] == "test"]["key"].iloc[0]
    grown = first.drop(columns="split")
    # Two train images and one test image turn out to be one lesion: the test image moves.
    train_keys = first[first["split"] == "train"]["key"].iloc[:2].tolist()
    grown.loc[grown["key"].isin([*train_keys, test_key]), "lesion_id"] = "joined"
    result = split_with_moves(grown, seed=1, previous=first[["key", "split"]])
    assert result.moves.to_dict("records") == [{"key": test_key, "from": "test", "to": "train"}]
    with caplog.at_level("WARNING", logger="skin.data.stages"):
        out = split_images(grown, "x", SplitConfig(seed=1), previous=first[["key", "split"]])
    validate(out)
    assert "1 images of the previous manifest changed split (test->train: 1)" in caplog.text


def test_a_tie_between_joined_parts_keeps_the_scarce_split_filled() -> None:
    first = with_split(make_images({"AK": 10, "NV": 40}), seed=2)  # AK: 8 train, 1 dev, 1 test
    ak = first[first["label"] == "AK"]
    test_key = ak[ak["split"] == "test"]["key"].iloc[0]
    train_key = ak[ak["split"] == "train"]["key"].iloc[0]
    grown = first.drop(columns="split")
    grown.loc[grown["key"].isin([test_key, train_key]), "lesion_id"] = "joined"  # one vs one
    for order in (grown, grown.iloc[::-1]):
        result = split_with_moves(order, seed=2, previous=first[["key", "split"]])
        assert result.moves.to_dict("records") == [
            {"key": train_key, "from": "train", "to": "test"}
        ]
        assert not result.gaps, "the tie must not empty AK's only test cell"


def test_a_class_pinned_out_of_a_split_is_reported_loudly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = with_split(make_images({"AK": 10, "NV": 40}))
    first.loc[first["label"] == "AK", "split"] = "train"  # an old manifest without AK in dev/test
    with caplog.at_level("WARNING", logger="skin.data.split"):
        result = split_with_moves(first.drop(columns="split"), previous=first[["key", "split"]])
    assert result.gaps == [("AK", "dev"), ("AK", "test")], "pinned rows do not move for coverage"
    assert "class AK has no dev images" in caplog.text and "class AK has no test" in caplog.text
    new = make_images({"AK": 2}, start=1000)
    grown = split_with_moves(
        pd.concat([first.drop(columns="split"), new], ignore_index=True),
        previous=first[["key", "split"]],
    )
    assert not grown.gaps, "new AK images fill the splits AK lacks"
    assert sorted(grown.split.iloc[-2:]) == ["dev", "test"]


def test_lesion_groups_reach_every_split_for_every_seed() -> None:
    df = make_images({"NV": 30, "DF": 11}).assign(lesion_id=None)
    df.loc[df["label"] == "DF", "lesion_id"] = [f"L{i}" for i in (0, 0, 1, 1, 2, 2, 2, 3, 3, 3, 3)]
    for seed in range(5):
        df_sizes = with_split(df, seed=seed).query("label == 'DF'")["split"].value_counts()
        assert df_sizes.get("dev", 0) >= 1 and df_sizes.get("test", 0) >= 1, (seed, df_sizes)
        assert df_sizes["train"] >= 7, f"seed {seed}: train should keep the bulk: {df_sizes}"


def _components(df: pd.DataFrame) -> list[int]:
    """Rows linked by identical file, lesion or near-duplicate cluster: a union-find written
    apart from skin.data.split's."""
    parent = list(range(len(df)))

    def root(i: int) -> int:
        return i if parent[i] == i else root(parent[i])

    for column in ("fingerprint", "lesion_id", CLUSTER):
        if column not in df:
            continue
        first: dict[str, int] = {}
        for i, value in enumerate(df[column]):
            if pd.notna(value):
                parent[root(i)] = root(first.setdefault(value, i))
    return [root(i) for i in range(len(df))]


def _groups_per_class(df: pd.DataFrame) -> pd.Series:
    return df.assign(comp=_components(df)).groupby("label")["comp"].nunique()


def _draw_images(data: st.DataObject, rows: pd.DataFrame, labels: list[str], step: int) -> list:
    """New images: per class a few, some of known lesions, some identical to earlier files."""
    pool = rows[~rows["key"].str.contains("anchor")]["fingerprint"].tolist()
    out = []
    for label in labels:
        for k in range(data.draw(st.integers(0, 8 if step == 0 else 4))):
            key = f"{label}/s{step}_{k}.jpg"
            twin = data.draw(st.sampled_from([None, None, *pool]))  # maybe another class's file
            out.append(
                {
                    "key": key,
                    "label": label,
                    "fingerprint": twin or f"fp-{key}",
                    "lesion_id": data.draw(st.sampled_from([None, f"{label}-a", f"{label}-b"])),
                }
            )
            pool.append(out[-1]["fingerprint"])
    return out


def _draw_link(data: st.DataObject, df: pd.DataFrame, split: pd.Series, n: int) -> pd.DataFrame:
    """New metadata or a changed file that links two earlier images, often from different splits."""
    linkable = df.index[~df["key"].str.contains("anchor") & split.notna()]
    if len(linkable) < 2:
        return df
    i = data.draw(st.sampled_from(list(linkable)))
    others = [j for j in linkable if j != i and split[j] != split[i]] or list(linkable.drop(i))
    j = data.draw(st.sampled_from(others))
    out = df.copy()
    if data.draw(st.booleans()):  # the file at j now has i's content
        out.loc[j, "fingerprint"] = out.loc[i, "fingerprint"]
    elif out.loc[i, "label"] == out.loc[j, "label"]:  # metadata: j's lesion is i's lesion
        lesion = out.loc[i, "lesion_id"] or f"m{n}"
        same = (out["lesion_id"] == out.loc[j, "lesion_id"]) if out.loc[j, "lesion_id"] else False
        out.loc[same | (out.index == i) | (out.index == j), "lesion_id"] = lesion
    # A link that leaves a class fewer groups than splits makes the data unsplittable: skip it.
    return out if (_groups_per_class(out) >= 3).all() else df


def _check_growth(df: pd.DataFrame, previous: pd.DataFrame, result: SplitResult) -> None:
    """Unmerged groups keep their split; merged ones take their largest part's; moves say so."""
    before = df["key"].map(previous.set_index("key")["split"]).tolist()
    after = result.split.tolist()
    components = _components(df)
    parts: dict[int, Counter] = defaultdict(Counter)
    for comp, old in zip(components, before, strict=True):
        if isinstance(old, str):
            parts[comp][old] += 1
    for comp, new, old in zip(components, after, before, strict=True):
        if comp in parts:  # one of the largest earlier parts wins
            top = max(parts[comp].values())
            assert parts[comp][new] == top, f"{old} -> {new}, earlier parts {dict(parts[comp])}"
    moved = [k for k, b, a in zip(df["key"], before, after, strict=True) if b in SPLITS and b != a]
    assert sorted(result.moves["key"]) == sorted(moved), "every move must be reported"


@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,  # the same examples in every run: CI fails only on a real regression
    suppress_health_check=[HealthCheck.too_slow],
)
@given(data=st.data(), seed=st.integers(0, 3))
def test_growth_never_fails_never_leaks_and_reaches_every_split(
    data: st.DataObject, seed: int
) -> None:
    labels = data.draw(
        st.lists(st.sampled_from(["AK", "DF", "NV", "VASC"]), min_size=1, max_size=3, unique=True)
    )
    anchors = [
        {
            "key": f"{label}/anchor{k}.jpg",
            "label": label,
            "fingerprint": f"{label}{k}",
            "lesion_id": None,
        }
        for label in labels
        for k in range(3)
    ]
    df = pd.DataFrame(anchors)  # three unlinked images: every class stays splittable
    df = pd.concat([df, pd.DataFrame(_draw_images(data, df, labels, 0))], ignore_index=True)
    previous = None
    for step in range(data.draw(st.integers(1, 4))):
        if previous is not None:
            split = df["key"].map(previous.set_index("key")["split"])
            for n in range(data.draw(st.integers(0, 3))):
                df = _draw_link(data, df, split, 10 * step + n)
            grown = pd.DataFrame(_draw_images(data, df, labels, step))
            df = pd.concat([df, grown], ignore_index=True)
        result = split_with_moves(df, seed=seed, previous=previous)
        out = df.assign(split=result.split.to_numpy(), keep=True, source="x")
        validate(out)  # no lesion and no identical file straddles splits
        if previous is not None:
            _check_growth(df, previous, result)
        cells = set(zip(out["label"], out["split"], strict=True))
        missing = [(c, s) for c in labels for s in SPLITS if (c, s) not in cells]
        assert sorted(missing) == sorted(result.gaps), "every empty cell must be reported"
        assert previous is not None or not missing, f"a fresh split left {missing} empty"
        previous = out[["key", "split"]]


def _cluster_rows(data: st.DataObject, labels: list[str], step: int, clusters: list[str]) -> list:
    """New images, each maybe a near-duplicate of an earlier cluster (of any class) or a new one."""
    out = []
    for label in labels:
        for k in range(data.draw(st.integers(0, 6))):
            key = f"{label}/d{step}_{k}.jpg"
            cluster = data.draw(st.sampled_from([None, f"new-{key}", *clusters]))
            out.append({"key": key, "label": label, "fingerprint": f"fp-{key}", CLUSTER: cluster})
            if cluster is not None and cluster not in clusters:
                clusters.append(cluster)
    return out


@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(data=st.data(), seed=st.integers(0, 3))
def test_near_duplicate_clusters_never_straddle_and_growth_keeps_them_together(
    data: st.DataObject, seed: int
) -> None:
    """Whatever the clusters (across classes too), none straddles splits; as the data grows,
    new copies join old clusters and a re-audit merges two, earlier images keep their split
    unless their cluster merged with another split's (then the largest part's split wins)."""
    labels = data.draw(
        st.lists(st.sampled_from(["AK", "DF", "NV", "VASC"]), min_size=1, max_size=3, unique=True)
    )
    anchors = [
        {
            "key": f"{label}/anchor{k}.jpg",
            "label": label,
            "fingerprint": f"{label}{k}",
            CLUSTER: None,
        }
        for label in labels
        for k in range(3)
    ]
    clusters: list[str] = []
    df = pd.DataFrame(anchors + _cluster_rows(data, labels, 0, clusters))
    previous = None
    for step in range(data.draw(st.integers(1, 4))):
        if previous is not None:
            if len(clusters) >= 2 and data.draw(st.booleans()):  # a re-audit links two clusters
                a, b = data.draw(
                    st.lists(st.sampled_from(clusters), min_size=2, max_size=2, unique=True)
                )
                df.loc[df[CLUSTER] == a, CLUSTER] = b
            df = pd.concat(
                [df, pd.DataFrame(_cluster_rows(data, labels, step, clusters))], ignore_index=True
            )
        result = split_with_moves(df, seed=seed, previous=previous)
        out = df.assign(split=result.split.to_numpy(), keep=True, source="x")
        validate(out)  # no near-duplicate cluster straddles splits
        straddling = out.dropna(subset=[CLUSTER]).groupby(CLUSTER)["split"].nunique()
        assert (straddling == 1).all(), f"clusters across splits: {straddling[straddling > 1]}"
        if previous is not None:
            _check_growth(df, previous, result)
        previous = out[["key", "split"]]


def test_a_manifest_with_a_straddling_cluster_is_refused() -> None:
    df = with_split(make_images({"AK": 10, "NV": 10}))
    df[CLUSTER] = None
    df.loc[df["split"] == "train", CLUSTER] = "c"
    df.loc[df.index[df["split"] == "test"][:1], CLUSTER] = "c"
    with pytest.raises(ManifestError, match="near-duplicate images straddle"):
        validate(df.assign(keep=True, source="x"))


@pytest.mark.parametrize(
    ("counts", "kwargs", "match"),
    [
        ({"AK": 2, "NV": 50}, {}, "class AK is too small"),
        ({"AK": 50}, {"fractions": (0.8, 0.1, 0.2)}, "sum to 1"),
        ({"AK": 50}, {"fractions": (0.9, 0.1)}, "need 3 fractions"),
        ({}, {}, "empty"),
    ],
)
def test_split_errors_name_the_cause(counts: dict[str, int], kwargs: dict, match: str) -> None:
    df = make_images(counts) if counts else pd.DataFrame(columns=["key", "label", "fingerprint"])
    with pytest.raises(SplitError, match=match):
        assign_splits(df, **kwargs)


def test_one_lesion_class_cannot_be_split() -> None:
    df = make_images({"AK": 6, "NV": 60})
    df.loc[df["label"] == "AK", "lesion_id"] = "one-lesion"
    with pytest.raises(SplitError, match=r"AK is too small.*1 independent groups"):
        assign_splits(df)


def test_other_fractions_are_honoured() -> None:
    df = with_split(make_images({"AK": 200, "NV": 400}), fractions=(0.6, 0.2, 0.2))
    sizes = df.groupby("split").size()
    assert np.isclose(sizes["dev"] / 600, 0.2, atol=0.01), sizes.to_dict()
    assert np.isclose(sizes["train"] / 600, 0.6, atol=0.01), sizes.to_dict()
