"""End to end in a real browser: Debian's chromium driven by Playwright.

Starts `streamlit run app/main.py` on a free port with a fresh workspace, computes
importance (on the demo teacher when it is shipped, else a tiny model), checks that
the heatmaps render, moves a planner control and sees the parameter count change,
prunes and evaluates a candidate, and finds its point on the Pareto chart.
Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
from app_fixtures import app_model, tiny_moe_model_dir

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.xdist_group("browser")]
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
JOB_TIMEOUT_MS = 600_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed: run scripts/install-browser.sh (Debian's chromium)")
    model = app_model(tmp_path)
    workspace = tmp_path / "workspace"
    with streamlit_server(tmp_path, workspace) as url:
        yield url, model, workspace


@pytest.fixture
def moe_server(tmp_path, monkeypatch):
    """A tiny NemotronH mixture of experts whose importance a real job has computed in the app's workspace."""
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed: run scripts/install-browser.sh (Debian's chromium)")
    from hybridlab.jobs import run_sync

    model = tiny_moe_model_dir(tmp_path / "moe")
    workspace = tmp_path / "workspace"
    monkeypatch.setenv("HYBRIDLAB_WORKSPACE", str(workspace))
    spec = {"model": model.ref, "calib": model.calib, "samples": 8, "seq_len": 32}
    run_sync("importance", spec, progress=lambda *args: None)
    with streamlit_server(tmp_path, workspace) as url:
        yield url, model, workspace


@contextmanager
def streamlit_server(tmp_path, workspace):
    """`streamlit run app/main.py` on a free port with `workspace`; stops it and the worker it started."""
    port = free_port()
    env = {**os.environ, "HYBRIDLAB_WORKSPACE": str(workspace), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            str(ROOT / "app" / "main.py"),
            "--server.headless",
            "true",
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--browser.gatherUsageStats",
            "false",
        ],
        cwd=ROOT,
        env=env,
        stdout=open(tmp_path / "streamlit.log", "wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"streamlit did not start:\n{(tmp_path / 'streamlit.log').read_text()[-3000:]}")
            time.sleep(0.5)
    try:
        yield url
    finally:
        stop(proc, workspace)


def stop(proc, workspace) -> None:
    proc.terminate()
    proc.wait(timeout=20)
    from hybridlab.jobs.worker import live_workers

    for worker in live_workers(workspace):  # the worker the app started for this workspace
        try:
            os.kill(int(worker["pid"]), signal.SIGTERM)
        except ProcessLookupError:
            pass


def open_model(page, url: str, folder: str) -> None:
    page.goto(url)
    page.get_by_role("heading", name="Model").first.wait_for(timeout=60_000)
    page.get_by_text("local folder").click()
    use_folder(page, folder)


def use_folder(page, folder: str, timeout_ms: float = 60_000) -> None:
    """Fill the Model page's folder and click "Use this folder" until the sidebar names that model. The
    demo teacher's page already shows a layer pattern, so waiting for one passed even when the click was
    lost; a fresh-clone CI run went on with the demo teacher chosen (its Importance page had no runs of
    the MoE model to load)."""
    page.get_by_label("Hugging Face model folder").fill(folder)
    chosen = page.get_by_test_id("stSidebar").get_by_text(f"Model: {Path(folder).name}")
    click_until(page.get_by_role("button", name="Use this folder"), chosen, timeout_ms)
    page.get_by_text("Layer pattern").first.wait_for(timeout=timeout_ms)


def go_to(page, title: str, timeout_ms: float = 30_000) -> None:
    """Click the sidebar link until the page's heading shows: on a loaded machine a click can land while
    the previous script run is still redrawing the sidebar, and is lost (a fresh-clone CI run waited
    120 s for a heading that one more click brings in seconds)."""
    link = page.get_by_test_id("stSidebarNav").get_by_text(title, exact=True)
    click_until(link, page.get_by_role("heading", name=title).first, timeout_ms)


def click_until(target, shown, timeout_ms: float) -> None:
    """Click `target` until `shown` is visible. A fresh-clone CI run clicked the Importance page's
    "Load scores" tab while the page's first script run was still drawing it; the tab came back
    unselected and the test waited 90 s for a button that was never going to show."""
    retry_until(lambda remaining_ms: target.click(timeout=remaining_ms), shown, timeout_ms)


def retry_until(action, shown, timeout_ms: float, page=None) -> None:
    """Call action(remaining ms) until `shown` is visible, up to 15 s a try; with `page`, a last failure
    says what the page showed."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        action(max(1_000, (deadline - time.monotonic()) * 1000))
        try:
            shown.wait_for(timeout=max(1_000, min(15_000, (deadline - time.monotonic()) * 1000)))
            return
        except PlaywrightTimeout:
            if time.monotonic() >= deadline:
                if page is not None:
                    pytest.fail(
                        f"not shown in {timeout_ms / 1000:.0f} s; the page read:\n{page.inner_text('body')[:3000]}"
                    )
                raise


def metric_value(page, label: str) -> str:
    metric = page.get_by_test_id("stMetric").filter(has_text=label).first
    return metric.get_by_test_id("stMetricValue").inner_text()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.wait_for_timeout(800)  # let plotly finish drawing
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_importance_plan_prune_evaluate_pareto(server):
    from playwright.sync_api import expect, sync_playwright

    url, model, workspace = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1700})
        page.goto(url)
        page.get_by_role("heading", name="Model").first.wait_for(timeout=60_000)
        # .streamlit/config.toml's toolbarMode: no button offering to publish the app to Streamlit's cloud
        expect(page.get_by_role("button", name="Deploy")).to_have_count(0)

        # Bad input: a folder that is not a model gives a clear message, not a traceback.
        page.get_by_text("local folder").click()
        page.get_by_label("Hugging Face model folder").fill(str(workspace))
        page.get_by_role("button", name="Use this folder").click()
        expect(page.get_by_text("has no config.json")).to_be_visible(timeout=30_000)
        expect(page.get_by_test_id("stException")).to_have_count(0)
        if model.is_demo:
            page.get_by_text("demo teacher").first.click()
        else:
            use_folder(page, model.ref)
        expect(page.get_by_text("Layer pattern")).to_be_visible(timeout=60_000)
        shot(page, "1-model")

        go_to(page, "Importance")
        if not model.is_demo:
            page.get_by_label("calibration data").fill(model.calib)
        page.get_by_label("calibration samples").fill("16")
        page.get_by_label("sequence length").fill("64")
        page.get_by_role("button", name="Run importance").click()
        expect(page.get_by_text("Mamba heads").first).to_be_visible(timeout=JOB_TIMEOUT_MS)
        heatmap = page.locator(".js-plotly-plot").first
        expect(heatmap).to_be_visible(timeout=60_000)
        expect(page.locator(".js-plotly-plot .heatmaplayer").first).to_be_attached()
        shot(page, "2-importance")

        go_to(page, "Prune planner")
        before = metric_value(page, "parameters")
        slider = page.get_by_role("slider", name=re.compile("Mamba heads"))
        slider.focus()
        slider.press("ArrowLeft")  # one step: n_groups fewer heads
        expect(
            page.get_by_test_id("stMetric").filter(has_text="parameters").first.get_by_test_id("stMetricValue")
        ).not_to_have_text(before, timeout=30_000)
        after = metric_value(page, "parameters")
        assert float(after.split()[0].replace(",", "")) < float(before.split()[0].replace(",", ""))
        expect(page.locator(".js-plotly-plot .scatterlayer path.point").first).to_be_attached(timeout=30_000)
        shot(page, "3-planner")

        page.get_by_label("candidate name (optional)").fill("fewer-heads")
        page.get_by_label("validation tokens", exact=True).fill("2048")
        if not model.is_demo:
            page.get_by_label("validation tokens file (.npy)").fill(model.val)
        page.get_by_role("button", name="Prune and evaluate").click()
        wait_for_jobs(page, workspace)
        shot(page, "4-jobs-done")

        go_to(page, "Pareto")
        chart = page.locator(".js-plotly-plot").first
        expect(chart).to_be_visible(timeout=60_000)
        points = chart.locator(".scatterlayer path.point")
        expect(points).to_have_count(2, timeout=30_000)  # the teacher and the candidate
        expect(chart.locator("text.legendtext", has_text="width")).to_have_count(1)  # the candidate's strategy
        shot(page, "5-pareto")
        expect(page.get_by_test_id("stException")).to_have_count(0)
        browser.close()


def wait_for_jobs(page, workspace) -> None:
    """Until the prune job and its eval/bench follow-ups, plus the teacher's, have all finished."""
    from hybridlab import jobs
    from hybridlab.store import FINISHED, SUCCEEDED

    deadline = time.monotonic() + JOB_TIMEOUT_MS / 1000
    while time.monotonic() < deadline:
        listing = jobs.list_jobs(workspace)
        kinds = set(listing["kind"])
        if (
            {"prune", "eval", "bench"} <= kinds
            and listing["status"].isin(FINISHED).all()
            and (listing["kind"] == "eval").sum() >= 2
        ):
            failed = listing[listing["status"] != SUCCEEDED]
            assert failed.empty, failed[["id", "kind", "status", "error"]].to_string()
            return
        page.wait_for_timeout(1000)  # the page polls meanwhile; the worker runs the chain by itself
    pytest.fail(f"jobs did not finish:\n{jobs.list_jobs(workspace)[['id', 'kind', 'status', 'message']]}")


def test_moe_planner_sets_expert_count_and_crosses_out_experts(moe_server, tmp_path):
    """The planner on a tiny mixture of experts: typing a routed-expert count changes both parameter counts
    and crosses experts out on the layers x experts heatmap; a count the router cannot use is one message."""
    from playwright.sync_api import expect, sync_playwright

    url, model, workspace = moe_server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1700})
        # a link naming no model: one warning, and the page still works
        page.goto(f"{url}/?model={workspace / 'no-such-model'}")
        expect(page.get_by_text("The link's model could not be opened")).to_be_visible(timeout=60_000)
        expect(page.get_by_test_id("stException")).to_have_count(0)
        open_model(page, url, model.ref)
        # a reload starts a new session: the URL brings the chosen model back
        page.reload()
        page.get_by_role("heading", name="Model").first.wait_for(timeout=60_000)
        sidebar = page.get_by_test_id("stSidebar")
        expect(sidebar.get_by_text(f"Model: {Path(model.ref).name}")).to_be_visible(timeout=60_000)
        expect(page.get_by_label("Hugging Face model folder")).to_have_value(model.ref, timeout=30_000)

        def open_stored_runs(remaining_ms):
            # each try draws the page afresh (from another page): a fresh-clone CI run clicked this tab for
            # 120 s (two cores shared with other tests) without its button ever showing
            go_to(page, "Prune planner", remaining_ms)
            go_to(page, "Importance", remaining_ms)
            page.get_by_role("tab", name="Load scores").click(timeout=remaining_ms)

        retry_until(open_stored_runs, page.get_by_role("button", name="Load run"), 240_000, page)
        page.get_by_role("button", name="Load run").click()
        expect(page.get_by_text("Routed experts: routing share").first).to_be_visible(timeout=60_000)

        go_to(page, "Prune planner", 120_000)
        values = lambda label: (
            page.get_by_test_id("stMetric")
            .filter(has_text=label)
            .first.get_by_test_id(  # noqa: E731
                "stMetricValue"
            )
        )
        before = {label: metric_value(page, label) for label in ("parameters", "active parameters / token")}
        experts = page.get_by_label("routed experts")
        experts.fill("3")  # fewer than the router's top-2 from 1 of 2 groups needs
        experts.press("Enter")
        expect(page.get_by_text("keeps too few experts")).to_be_visible(timeout=30_000)
        expect(page.get_by_test_id("stAlertContentError")).to_have_count(1)
        experts.fill("4")
        experts.press("Enter")
        for label, value in before.items():
            expect(values(label)).not_to_have_text(value, timeout=30_000)
        expect(page.get_by_test_id("stAlertContentError")).to_have_count(0)
        heatmap = page.locator(".js-plotly-plot").filter(has_text="Routed experts").first
        heatmap.scroll_into_view_if_needed()
        expect(heatmap.locator(".heatmaplayer")).to_be_attached(timeout=30_000)
        # 4 of 8 experts go in each of the 3 MoE layers
        expect(heatmap.locator(".scatterlayer path.point")).to_have_count(12, timeout=30_000)
        page.wait_for_timeout(800)  # let plotly finish drawing
        heatmap.screenshot(path=str(tmp_path / "moe-experts-heatmap.png"))
        page.screenshot(path=str(tmp_path / "moe-planner.png"), full_page=True)
        assert (tmp_path / "moe-experts-heatmap.png").stat().st_size > 1000
        expect(page.get_by_test_id("stException")).to_have_count(0)
        browser.close()
