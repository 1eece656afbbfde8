"""The Depth vs width page end to end in a real browser (Debian's chromium driven by Playwright): the
demo teacher at 50% of its parameters on the page's quick budgets, every job run by the worker the app
starts; the three candidates appear with their intervals. Screenshots go to the test's tmp_path and,
when HYBRIDLAB_SCREENSHOTS=dir is set, to that folder too."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest
from test_browser import CHROMIUM_ARGS, server  # noqa: F401  (the fixture: streamlit on a fresh workspace)

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.xdist_group("browser")]
JOBS_TIMEOUT_S = 900
INTERVAL = re.compile(r"-?\d+\.\d+x? \[-?\d+\.\d+, -?\d+\.\d+\]")


def shot(page, folder: Path, name: str) -> None:
    page.wait_for_timeout(800)  # let plotly finish drawing
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)
    extra = os.environ.get("HYBRIDLAB_SCREENSHOTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(folder / f"{name}.png", Path(extra) / f"{name}.png")


def wait_for_comparison(page, workspace) -> None:
    """Until the importance job, three searches, the teacher's eval and three chains of five have finished."""
    from hybridlab import jobs
    from hybridlab.store import FINISHED, SUCCEEDED

    deadline = time.monotonic() + JOBS_TIMEOUT_S
    while time.monotonic() < deadline:
        listing = jobs.list_jobs(workspace)
        if len(listing) >= 1 + 3 + 1 + 3 * 5 and listing["status"].isin(FINISHED).all():
            failed = listing[listing["status"] != SUCCEEDED]
            assert failed.empty, failed[["id", "kind", "status", "error"]].to_string()
            return
        page.wait_for_timeout(1000)  # the page polls meanwhile and submits each next stage
    pytest.fail(f"jobs did not finish:\n{jobs.list_jobs(workspace)[['id', 'kind', 'status', 'message']]}")


def test_depth_vs_width_for_the_demo_at_half_size(server, tmp_path):  # noqa: F811
    from playwright.sync_api import expect, sync_playwright

    url, model, workspace = server
    if not model.is_demo:
        pytest.skip("the demo teacher is not shipped in this checkout (assets/demo)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1800})
        page.goto(url)
        page.get_by_role("heading", name="Model").first.wait_for(timeout=60_000)
        page.get_by_test_id("stSidebarNav").get_by_text("Depth vs width", exact=True).click()
        page.get_by_role("heading", name="Depth versus width").first.wait_for(timeout=60_000)

        page.get_by_text("quick look (tiny budgets)").click()
        page.get_by_label("tolerance (% of the budget)").fill("5")
        page.get_by_role("button", name="Find and compare").click()
        expect(page.get_by_test_id("stException")).to_have_count(0)
        wait_for_comparison(page, workspace)

        metrics = page.get_by_test_id("stMetric")
        for label in ("zero-shot loss (95% CI)", "distilled loss (95% CI)", "prefill speedup vs teacher (95% CI)"):
            values = metrics.filter(has_text=label).get_by_test_id("stMetricValue")
            expect(values).to_have_count(3, timeout=120_000)
            for i in range(3):
                expect(values.nth(i)).to_have_text(INTERVAL, timeout=120_000)
        for title in ("width only", "depth only", "mixed"):
            expect(page.get_by_role("heading", name=title).first).to_be_visible()
        expect(page.locator(".js-plotly-plot").first).to_be_visible()
        shot(page, tmp_path, "depth-vs-width-demo-50")
        expect(page.get_by_test_id("stException")).to_have_count(0)
        browser.close()
