"""The MLflow UI in a real headless Chromium: two pipeline runs listed with metrics, then compared."""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from tests.recipes import TINY

pytestmark = [pytest.mark.slow, pytest.mark.server]

CHROMIUM = Path("/usr/bin/chromium")
# Offline-friendly flags (see docs/REFERENCE: "MLflow UI in a real browser").
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
METRIC = "test_balanced_accuracy"
PARAM = "train.lr"
TIMEOUT_MS = 60_000


def _require_browser() -> None:
    """Skip only where a developer has no Chromium; in CI (`CI` set) a missing browser fails."""
    if not CHROMIUM.is_file():
        message = f"browser test needs {CHROMIUM}: apt-get install -y chromium"
        if os.environ.get("CI"):
            pytest.fail(f"{message} (CI must install it in .ci/run)")
        pytest.skip(message)
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as err:
        raise AssertionError(
            "playwright is missing: pip install -e '.[dev]' (never `playwright install`)"
        ) from err


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Any]:
    """A fresh headless Chromium page (system browser, no Playwright download)."""
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS, headless=True)
        try:
            pg = browser.new_page(viewport={"width": 1600, "height": 1000})
            pg.set_default_timeout(TIMEOUT_MS)
            yield pg
            shot(pg, tmp_path / "last.png")  # the page as the test left it (helps on failure)
        finally:
            browser.close()


def shot(page: Any, path: Path) -> Path:
    page.screenshot(path=str(path))
    print(f"screenshot: {path}")
    return path


def show_columns(page: Any, wanted: dict[str, bool]) -> None:
    """Tick or untick runs-table columns in the "Columns" picker (metrics start hidden)."""
    page.get_by_role("button", name="Columns").click()
    tree = page.get_by_test_id("column-selector-tree")
    for name, on in wanted.items():
        page.get_by_placeholder("Search columns").fill(name)
        node = tree.locator(
            ".du-bois-light-tree-treenode", has_text=re.compile(f"^{re.escape(name)}$")
        )
        node.wait_for()
        checked = "checkbox-checked" in (node.get_attribute("class") or "")
        if checked != on:
            node.locator(".du-bois-light-tree-checkbox").click()
    page.keyboard.press("Escape")


def close_assistant(page: Any) -> None:
    """The MLflow Assistant side panel opens by default and narrows the table."""
    close = page.get_by_role("button", name="Close")
    if close.count():
        close.first.click()


def cell(page: Any, run_id: str, col_id: str) -> str:
    return page.locator(f'[role=row][row-id="{run_id}"] [col-id="{col_id}"]').inner_text().strip()


def _inside(item: Any, frame: Any) -> bool:
    box, outer = item.bounding_box(), frame.bounding_box()
    return bool(box and outer) and box["y"] + box["height"] <= outer["y"] + outer["height"]


def compare_metric(page: Any, metric: str) -> list[str]:
    """Wheel the compare page's (virtualised) metrics grid to `metric`; its value per run."""
    switch = page.get_by_role("switch", name="Metrics - Show diff only")
    section = page.locator(".du-bois-light-collapse-item").filter(has=switch)
    grids = section.locator(".ReactVirtualized__Grid")
    names, values = grids.first, grids.last
    target = names.get_by_text(metric, exact=True)
    values.hover()
    for _ in range(200):
        if target.count() and target.is_visible() and _inside(target, names):
            break
        page.mouse.wheel(0, 120)
        page.wait_for_timeout(60)
    page.mouse.wheel(0, 1)  # the name column follows one scroll event late: nudge it level
    page.wait_for_timeout(300)
    top = target.evaluate(
        "e => e.closest('.ReactVirtualized__Grid__innerScrollContainer > *').style.top"
    )
    cells = values.locator(
        f'.ReactVirtualized__Grid__innerScrollContainer > [style*="top: {top};"]'
    )
    return [c.inner_text().strip() for c in cells.all()]


def compared_run_ids(page: Any) -> list[str]:
    """Run ids in the compare page's column order (the "Run ID:" row)."""
    row = page.locator("table").first.locator("tr").first
    return [c.inner_text().strip() for c in row.locator("td, th").all()][1:]


def shown_equals(text: str, value: float) -> bool:
    """The UI's number equals `value` to the digits it shows."""
    decimals = len(text.split(".", 1)[1]) if "." in text else 0
    return abs(float(text) - value) <= 0.5 * 10**-decimals + 1e-9


def test_mlflow_ui_lists_and_compares_two_pipeline_runs(
    tmp_path: Path, sample_data: Path, mlflow_server, prefect_api, page: Any
) -> None:
    from flows.pipeline import pipeline_flow

    experiment = f"ui-{uuid.uuid4().hex[:8]}"
    base = {
        **TINY,
        "train.epochs": 3,
        "work_dir": str(tmp_path / "work"),
        "tracking.tracking_uri": mlflow_server.url,
        "tracking.experiment": experiment,
        "tracking.registered_model": f"ui-{uuid.uuid4().hex[:8]}",
    }
    lrs = (0.003, 0.001)
    runs = [
        pipeline_flow(data_uri=str(sample_data), overrides={**base, PARAM: lr})["run_id"]
        for lr in lrs
    ]
    assert runs[0] != runs[1], f"two settings, two MLflow runs: {runs}"
    client = MlflowClient(mlflow_server.url)
    exp_id = client.get_experiment_by_name(experiment).experiment_id
    logged = {r: client.get_run(r).data.metrics[METRIC] for r in runs}

    page.goto(f"{mlflow_server.url}/#/experiments/{exp_id}/runs")
    for run_id in runs:
        page.locator(f'[role=row][row-id="{run_id}"]').first.wait_for()
    close_assistant(page)
    show_columns(page, {"Dataset": False, "Source": False, METRIC: True, PARAM: True})
    metric_col, param_col = f"metrics.`{METRIC}`", f"params.`{PARAM}`"
    page.locator(f'[col-id="{metric_col}"]').first.wait_for()
    shot(page, tmp_path / "runs.png")
    for run_id, lr in zip(runs, lrs, strict=True):
        shown = cell(page, run_id, metric_col)
        assert shown_equals(shown, logged[run_id]), (
            f"run {run_id}: the table shows {METRIC}={shown!r}, MLflow has {logged[run_id]}"
        )
        assert float(cell(page, run_id, param_col)) == lr, f"run {run_id} shows its {PARAM}"
    listed = {r.get_attribute("row-id") for r in page.locator("[role=row][row-id]").all()}
    assert listed == set(runs), f"the table lists exactly the two runs: {listed}"

    page.set_viewport_size({"width": 1600, "height": 2200})
    query = f"runs={json.dumps(runs)}&experiments={json.dumps([exp_id])}"
    page.goto(f"{mlflow_server.url}/#/compare-runs?{query}")
    page.get_by_text("Comparing 2 Runs").wait_for()
    for run_id in runs:
        page.get_by_text(run_id, exact=True).first.wait_for()
    close_assistant(page)
    page.get_by_role("switch", name="Parameters - Show diff only").click()
    columns = compared_run_ids(page)
    assert sorted(columns) == sorted(runs), f"compare page columns {columns}, runs {runs}"
    values = compare_metric(page, METRIC)
    shot(page, tmp_path / "compare.png")
    assert len(values) == 2, f"one {METRIC} value per run on the compare page: {values}"
    for run_id, shown in zip(columns, values, strict=True):
        assert shown_equals(shown, logged[run_id]), (
            f"compare page: run {run_id} shows {METRIC}={shown!r}, MLflow has {logged[run_id]}"
        )
    body = page.locator("body").inner_text()
    name = client.get_run(runs[0]).info.run_name
    assert name in body, f"compare page shows the run name {name!r}"
    assert PARAM in body, f"the differing parameter {PARAM} is listed"
