"""End to end: a real `streamlit run` server and Debian's chromium through Playwright.

Home → "Run the demo" → the live view updates while the search runs, Pause and Resume work, a second
session re-attaches, and the view reports the run finished →
Explore shows the path. Screenshots and the timing go to test-artifacts/ (look at them).
"""
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from playwright.sync_api import sync_playwright

from tests.conftest import REPO

ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    port = free_port()
    env = {**os.environ, "LLPF_HOME": str(tmp_path / "workspace")}
    log = open(tmp_path / "streamlit.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app/Home.py", "--server.port", str(port),
                             "--server.headless", "true"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            pass
        assert proc.poll() is None and time.time() < deadline, (tmp_path / "streamlit.log").read_text()
        time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(30)
    log.close()


def second_tab_sees_the_run(browser, url: str) -> None:
    """A second browser session on the same URL re-attaches to the run, which lives in the server."""
    other = browser.new_context().new_page()
    other.goto(url)
    other.get_by_text("last tick", exact=False).first.wait_for(timeout=60_000)
    assert other.get_by_text("following its run folder", exact=False).count() == 0  # the job itself
    other.context.close()


def test_demo_in_the_browser(server):
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(server)
        page.get_by_role("button", name="Run the demo").wait_for(timeout=60_000)
        page.screenshot(path=ARTIFACTS / "e2e-1-home.png", full_page=True)

        t0 = time.time()
        page.get_by_role("button", name="Run the demo").click()
        page.wait_for_url("**/runs?run=demo-*", timeout=30_000)
        # Pause as soon as the search exists (the digits demo runs 300 ticks in a few seconds): the run
        # checkpoints and says so, a second browser session re-attaches to the job, and Resume continues.
        pause = page.get_by_role("button", name="Pause")
        deadline = time.time() + 240  # generous: CI machines can be slow to start the search process
        while not (pause.count() and pause.is_enabled()):
            assert time.time() < deadline, "the Pause button never became enabled"
            time.sleep(0.1)
        pause.click()
        page.get_by_text("status paused", exact=False).first.wait_for(timeout=240_000)
        page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
        page.screenshot(path=ARTIFACTS / "e2e-2-live-paused.png", full_page=True)
        second_tab_sees_the_run(browser, page.url)
        # The progress line updates every second while the run is live (the charts every few seconds).
        progress = page.get_by_text(re.compile(r"tick \d+ / 300"))
        updates = [progress.first.inner_text()]
        page.get_by_role("button", name="Resume").click()
        finished = None
        while time.time() - t0 < 300:
            if progress.count():
                text = progress.first.inner_text()
                if updates[-1] != text:
                    updates.append(text)
            caption = page.get_by_text("last tick", exact=False)
            if caption.count() and "status finished" in caption.first.inner_text():
                finished = time.time() - t0
                break
            time.sleep(0.25)
        assert finished is not None, f"the demo did not finish; last states seen: {updates[-3:]}"
        ticks = [int(re.search(r"tick (\d+) / 300", u).group(1)) for u in updates]
        assert ticks == sorted(ticks) and any(ticks[0] < t < 300 for t in ticks), updates  # live while running
        # The run folder says finished a moment before the job does; then the buttons follow.
        page.get_by_text("tick 300 / 300", exact=False).wait_for(timeout=30_000)
        page.locator("code", has_text="finished").first.wait_for(timeout=30_000)
        assert not page.get_by_role("button", name="Pause").is_enabled()
        page.screenshot(path=ARTIFACTS / "e2e-3-live-finished.png", full_page=True)

        page.get_by_role("link", name="Explore").click()
        page.get_by_text("Path vs straight line").first.wait_for(timeout=60_000)
        assert "run=demo-" in page.url and page.get_by_text("Per-layer values at tick 300").count()
        page.wait_for_timeout(1000)
        page.screenshot(path=ARTIFACTS / "e2e-4-explore.png", full_page=True)
        browser.close()
    (ARTIFACTS / "e2e-timing.txt").write_text(
        f"demo: click to finished in the browser {finished:.1f} s; live updates seen {len(updates)}\n")
