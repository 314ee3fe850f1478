"""What the user asked to leave out of the split: findings by kind (`audit.exclude`) and a
reviewed list of keys (`audit.exclude_keys`), each row with the reason (`excluded_by`)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import pandas as pd

from skin.data.storage import StorageError, read_uri

EXCLUDED_COLUMNS = ["key", "excluded_by"]


class ExclusionError(ValueError):
    """An exclusion that cannot be applied; the message names the file or the setting."""


def reviewed_keys(uri: str) -> list[str]:
    """Keys from a reviewed list: a CSV with a `key` column, or plain text, one key a line."""
    try:
        raw = read_uri(uri)
    except (FileNotFoundError, StorageError) as err:
        raise ExclusionError(f"audit.exclude_keys: cannot read {uri}: {err}") from err
    text = raw.decode("utf-8-sig")
    first = text.splitlines()[0].strip() if text.strip() else ""
    if "," in first or first == "key":
        table = pd.read_csv(io.StringIO(text), dtype=str)
        if "key" not in table:
            raise ExclusionError(f"audit.exclude_keys: {uri} has no `key` column ({list(table)})")
        return table["key"].dropna().str.strip().tolist()
    return [line.strip() for line in text.splitlines() if line.strip()]


def duplicate_extras(images: pd.DataFrame, clusters: pd.DataFrame) -> list[str]:
    """All members of each near-duplicate cluster but one: the largest file is kept (the least
    re-encoded or downsized copy, as a rule), ties to the smallest key."""
    if clusters.empty:
        return []
    size = dict(zip(images["key"], images["size"], strict=True))
    ranked = clusters.assign(size=clusters["key"].map(size).fillna(0))
    ranked = ranked.sort_values(["cluster", "size", "key"], ascending=[True, False, True])
    return ranked[ranked.duplicated("cluster")]["key"].tolist()


def excluded(
    images: pd.DataFrame,
    kinds: Sequence[str],
    clusters: pd.DataFrame,
    unusable: pd.DataFrame,
    label_issues: pd.DataFrame | None,
    keys: list[str] | None,
) -> pd.DataFrame:
    """Every listed image to leave out, once, with each reason that named it."""
    reasons: list[tuple[str, str]] = []
    if "near_duplicates" in kinds:
        reasons += [(k, "near_duplicates") for k in duplicate_extras(images, clusters)]
    if "unusable" in kinds:
        reasons += [
            (k, f"unusable: {r}") for k, r in zip(unusable["key"], unusable["reason"], strict=True)
        ]
    if "label_issues" in kinds:
        if label_issues is None:
            raise ExclusionError(
                "audit.exclude names label_issues but this dataset has no suspect labels yet:"
                " run `skin audit --data URI --cv-run ID` after `skin cv`"
            )
        reasons += [(k, "label_issues") for k in label_issues["key"]]
    reasons += [(k, "reviewed list") for k in keys or []]
    table = pd.DataFrame(reasons, columns=EXCLUDED_COLUMNS)
    table = table[table["key"].isin(set(images["key"]))]
    return (
        table.groupby("key", sort=True)["excluded_by"]
        .agg(lambda r: "; ".join(dict.fromkeys(r)))
        .reset_index()
    )
