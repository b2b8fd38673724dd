"""A walk through every page after the demo, as a newcomer takes it: a real `llpf dashboard` server, Debian's
chromium through Playwright, one full-page screenshot per page in test-artifacts/walk-*.png. Each page must
draw its title and charts without an exception or an error box.

To keep the walk short, the workspace already holds the demo's pair (the session's digits_modes under the
demo's names, which the demo reuses; test_e2e_browser's demo trains them in a fresh workspace), and the demo
searches for the preset's 300 ticks (LLPF_DEMO_SET) instead of the dashboard's smoother 1500: the pages
draw the same charts either way."""
import os
import re
import sys
import time

import pytest
from playwright.sync_api import sync_playwright

from tests.conftest import REPO, demo_pair_in, free_port, streamlit_server

ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
ALL_CHARTS_DRAWN = """() => [...document.querySelectorAll('.js-plotly-plot')]
    .filter(p => p.offsetParent !== null)  // not those in a hidden tab
    .every(p => getComputedStyle(p).visibility === 'visible')"""
# (path, title, plotly charts at least)
PAGES = [("", "LLPF Explorer", 1), ("modes", "Modes", 0), ("search", "Search", 0), ("runs", "Runs", 2),
         ("explore", "Explore", 2), ("compare", "Compare", 1), ("methods", "Methods side by side", 2),
         ("sweeps", "Sweeps", 0)]


DEMO_SET = "ticks=300 phases.0.step_a=0.02"  # mlp-digits-m2m's own ticks and step


@pytest.fixture
def server(tmp_path, digits_modes):
    demo_pair_in(digits_modes, tmp_path / "workspace")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "LLPF_DEMO_SET": DEMO_SET}
    port = free_port()
    with streamlit_server([sys.executable, "-m", "llpf_core", "dashboard", "--port", str(port), "--workspace",
                           str(tmp_path / "workspace")], port, env, tmp_path / "dashboard.log", cwd=tmp_path) as url:
        yield url


def test_every_page_after_the_demo(server):
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(server)
        page.get_by_role("button", name="Run the demo").click()
        page.wait_for_url("**/runs?run=demo-*", timeout=60_000)
        run = re.search(r"run=(demo-[\w-]+)", page.url).group(1)
        page.get_by_text("status finished", exact=False).first.wait_for(timeout=600_000)
        # The demo job computes its landscape plane after the search; Home draws it once it is there.
        deadline = time.time() + 600
        while True:
            page.goto(server)
            try:
                page.locator(".js-plotly-plot").first.wait_for(timeout=15_000)
                break
            except Exception:
                assert time.time() < deadline, "Home never drew the demo's landscape plane"
        for path, title, charts in PAGES:
            query = f"?run={run}" if path in ("runs", "explore") else ""
            page.goto(f"{server}/{path}{query}")
            page.get_by_role("heading", name=title).first.wait_for(timeout=120_000)
            if charts:
                page.locator(".js-plotly-plot").nth(charts - 1).wait_for(timeout=120_000)
                page.wait_for_function(ALL_CHARTS_DRAWN, timeout=120_000)
            page.wait_for_timeout(500)
            page.screenshot(path=ARTIFACTS / f"walk-{path or 'home'}.png", full_page=True)
            assert page.get_by_test_id("stException").count() == 0, path
            errors = page.get_by_test_id("stAlertContentError")
            assert errors.count() == 0, (path, errors.all_inner_texts())
            assert "ModuleNotFoundError" not in page.inner_text("body")
            if path == "explore":  # the second tab: the landscape plane the demo computed
                page.get_by_role("tab", name="Landscape").click()
                page.get_by_text("Loss over the plane", exact=False).first.wait_for(timeout=120_000)
                page.wait_for_function(ALL_CHARTS_DRAWN, timeout=120_000)
                page.screenshot(path=ARTIFACTS / "walk-explore-landscape.png", full_page=True)
        device = page.goto(server) and page.get_by_test_id("stMetric").filter(has_text="Device").inner_text()
        sidebar = page.get_by_test_id("stSidebar").inner_text()
        assert ("GPU" in device) == ("no GPU" not in sidebar)  # Home's device agrees with the sidebar
        browser.close()
