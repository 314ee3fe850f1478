"""What commands print: JSON alone with --json, tables and lines for people, nothing with --quiet."""

from __future__ import annotations

import json

import pytest
from rich.table import Table

from flows.outcomes import ShardsResult
from skin.cli.output import registration_line, show, state
from skin.release.registry import Registration


def _show() -> None:
    table = Table(title="counts")
    table.add_column("class")
    table.add_row("NV")
    show({"images": 3}, table, "first line", None, "last line")


@pytest.mark.parametrize("mode", ["json", "quiet", "people"])
def test_each_mode_prints_only_its_own(
    mode: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(state, "json", mode == "json")
    monkeypatch.setitem(state, "quiet", mode == "quiet")
    _show()
    out = capsys.readouterr().out
    if mode == "json":
        assert json.loads(out) == {"images": 3}, out
    elif mode == "quiet":
        assert out == "", out
    else:
        assert "counts" in out and "NV" in out, out
        assert out.rstrip().endswith("first line\nlast line"), "lines in order, None left out"


def test_a_registration_reads_as_one_line() -> None:
    reg = Registration("m", "3", "champion", 0.8, 0.7, "2", "better")
    assert registration_line(reg) == "registry: m v3 → [bold]champion[/]: better"
    assert registration_line(None) is None


def test_a_flow_result_prints_as_the_json_it_always_did(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(state, "json", True)
    result = ShardsResult("s3://b/shards", 2, 1, 1, 0, 10)
    show(result, None, "a line for people")
    printed = json.loads(capsys.readouterr().out)
    assert printed == {"uri": "s3://b/shards", "shards": 2, "built": 1, "reused": 1, "bad": 0,
                       "count": 10}, printed  # fmt: skip


def test_in_a_pipe_the_metrics_table_keeps_each_value_on_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from skin.cli.output import metrics_table

    monkeypatch.setitem(state, "json", False)
    monkeypatch.setitem(state, "quiet", False)
    names = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc")
    metrics = {"bias": 0.1, "variance": 0.02, "variance_test": 0.01}
    for split in ("train", "dev", "test"):
        for name in names:
            metrics |= {f"{split}_{name}": 0.7123, f"{split}_{name}_ci_low": 0.681,
                        f"{split}_{name}_ci_high": 0.7405}  # fmt: skip
    show({}, metrics_table(metrics, "metrics"))
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.strip().startswith(("train", "dev", "test"))]
    assert len(rows) == 3, f"one line per split:\n{out}"
    assert all(row.count("0.7123 [0.681, 0.741]") == len(names) for row in rows), out
    assert "│" not in out and "┃" not in out, f"a plain table, no box drawing:\n{out}"
