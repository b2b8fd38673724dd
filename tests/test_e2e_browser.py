"""End to end: a real `streamlit run` server and Debian's chromium through Playwright.

Home → "Run the demo" → the live view's charts grow while the search runs, Pause and Resume work, a
second session re-attaches, and the view reports the run finished →
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


def chart_state(page) -> str | None:
    """The live charts' caption ("last tick N · status S ..."), None while no chart is drawn."""
    caption = page.get_by_text("last tick", exact=False)
    return caption.first.inner_text() if caption.count() else None


def test_demo_in_the_browser(server):
    """The demo as a visitor sees it. Timings are measured and written to test-artifacts/, not asserted;
    what is asserted holds at any speed: the charts grow at least three times while the run is running
    (the demo's 1,500 ticks take about 6 s here, and young runs redraw every second), Pause holds the run,
    a second session re-attaches, Resume finishes it."""
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        t_goto = time.time()
        page.goto(server)
        page.get_by_role("button", name="Run the demo").wait_for(timeout=60_000)
        first_paint = time.time() - t_goto
        page.screenshot(path=ARTIFACTS / "e2e-1-home.png", full_page=True)

        t0 = time.time()
        page.get_by_role("button", name="Run the demo").click()
        page.wait_for_url("**/runs?run=demo-*", timeout=30_000)
        progress = page.get_by_text(re.compile(r"tick \d+ / \d+"))
        running_states, updates, first_tick, first_chart = [], [], None, None
        deadline = time.time() + 300  # generous: CI machines can be slow to start the search process
        while True:  # watch the young run until its charts have grown three times, then pause it
            assert time.time() < deadline, f"no live growth; chart states seen: {running_states}"
            text = progress.first.inner_text() if progress.count() else ""
            if first_tick is None and re.search(r"tick [1-9]\d* / ", text):
                first_tick = time.time() - t0
            state = chart_state(page)
            if state and first_chart is None:
                first_chart = time.time() - t0
            if state and "status running" in state and state not in running_states:
                running_states.append(state)
            if text and (not updates or updates[-1] != text):
                updates.append(text)
            if len(running_states) >= 3 or (state and "status finished" in state):
                break
            time.sleep(0.1)
        assert len(running_states) >= 3, f"the charts grew fewer than three times while running: {running_states}"
        page.get_by_role("button", name="Pause").click()
        page.get_by_text("status paused", exact=False).first.wait_for(timeout=240_000)
        page.screenshot(path=ARTIFACTS / "e2e-2-live-paused.png", full_page=True)
        second_tab_sees_the_run(browser, page.url)
        paused_at = progress.first.inner_text()
        page.wait_for_timeout(1500)
        assert progress.first.inner_text() == paused_at  # nothing runs while paused
        page.get_by_role("button", name="Resume").click()
        finished = None
        while time.time() - t0 < 300:
            if progress.count():
                text = progress.first.inner_text()
                if updates[-1] != text:
                    updates.append(text)
            state = chart_state(page)
            if state and "status finished" in state:
                finished = time.time() - t0
                break
            time.sleep(0.25)
        assert finished is not None, f"the demo did not finish; last states seen: {updates[-3:]}"
        ticks = [int(re.search(r"tick (\d+) / ", u).group(1)) for u in updates]
        total = int(re.search(r"tick \d+ / (\d+)", updates[-1]).group(1))
        assert ticks == sorted(ticks) and any(ticks[0] < t < total for t in ticks), updates  # live while running
        # The run folder says finished a moment before the job does; then the buttons follow.
        page.get_by_text(f"tick {total} / {total}", exact=False).wait_for(timeout=30_000)
        page.locator("code", has_text="finished").first.wait_for(timeout=30_000)
        assert not page.get_by_role("button", name="Pause").is_enabled()
        page.screenshot(path=ARTIFACTS / "e2e-3-live-finished.png", full_page=True)

        page.get_by_role("link", name="Explore").click()
        page.get_by_text("Path vs straight line").first.wait_for(timeout=60_000)
        assert "run=demo-" in page.url and page.get_by_text(f"Per-layer values at tick {total}").count()
        page.wait_for_timeout(1000)
        page.screenshot(path=ARTIFACTS / "e2e-4-explore.png", full_page=True)
        browser.close()
    (ARTIFACTS / "e2e-timing.txt").write_text(
        f"Home: navigation to the Run the demo button {first_paint:.2f} s (fresh server)\n"
        f"demo: click to first tick {first_tick:.1f} s, to first chart {first_chart:.1f} s; chart states while "
        f"running before the pause {len(running_states)}: {[r.split(' ·')[0] for r in running_states]}\n"
        f"demo: click to finished in the browser {finished:.1f} s; progress updates seen {len(updates)}\n")
