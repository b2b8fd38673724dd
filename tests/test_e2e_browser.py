"""End to end: a real `streamlit run` server and Debian's chromium through Playwright.

Home → "Run the demo" → the live view's charts grow while the search runs, Pause and Resume work, a
second session re-attaches, Stop ends the run → Explore shows the path. Screenshots and the timing go to
test-artifacts/ (look at them).
"""
import os
import re
import sys
import time

import pytest
from playwright.sync_api import sync_playwright

from llpf_core import load_preset
from tests.conftest import REPO, free_port, streamlit_server  # noqa: F401  (free_port: for other tests)

ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
DEMO_TICKS = 100_000  # about 4 minutes here; the test stops the run after a few seconds


@pytest.fixture
def server(tmp_path):
    # The demo runs far longer than the test watches it, so no step of the test races the run's end.
    env = {**os.environ, "LLPF_HOME": str(tmp_path / "workspace"), "LLPF_DEMO_SET": f"ticks={DEMO_TICKS}"}
    port = free_port()
    with streamlit_server([sys.executable, "-m", "streamlit", "run", "app/Home.py", "--server.port", str(port),
                           "--server.headless", "true"], port, env, tmp_path / "streamlit.log") as url:
        yield url


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
    """The demo as a visitor sees it. Timings are measured and written to test-artifacts/, not asserted.
    What is asserted holds at any speed, since the server's demo has DEMO_TICKS ticks and every step
    waits for a state, not a time: the charts grow at least three times while the run is running (young
    runs redraw every second), Pause holds the run, a second session re-attaches, Resume continues it,
    Stop ends it, and Explore shows the path up to the stop."""
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
        progress = page.get_by_text(re.compile(rf"tick \d+ / {DEMO_TICKS}"))
        running_states, first_tick, first_chart = [], None, None
        deadline = time.time() + 300  # generous: CI machines can be slow to start the search process
        while len(running_states) < 3:  # watch the young run until its charts have grown three times
            assert time.time() < deadline, f"no live growth; chart states seen: {running_states}"
            if first_tick is None and progress.count() and not progress.first.inner_text().startswith("tick 0 "):
                first_tick = time.time() - t0
            state = chart_state(page)
            if state and first_chart is None:
                first_chart = time.time() - t0
            if state and "status running" in state and state not in running_states:
                running_states.append(state)
            time.sleep(0.1)
        page.screenshot(path=ARTIFACTS / "e2e-2-live-running.png", full_page=True)

        page.get_by_role("button", name="Pause").click()
        page.get_by_text("status paused", exact=False).first.wait_for(timeout=240_000)
        second_tab_sees_the_run(browser, page.url)
        paused_at = tick_of(progress.first.inner_text())
        page.wait_for_timeout(1500)
        assert tick_of(progress.first.inner_text()) == paused_at  # nothing runs while paused

        page.get_by_role("button", name="Resume").click()
        page.get_by_text("status running", exact=False).first.wait_for(timeout=60_000)
        deadline = time.time() + 120
        while tick_of(progress.first.inner_text()) <= paused_at:  # the progress line moves on again
            assert time.time() < deadline, "no progress after Resume"
            time.sleep(0.1)
        page.get_by_test_id("stMainBlockContainer").get_by_role("button", name="Stop").click()  # not the header's
        page.get_by_text("status stopped", exact=False).first.wait_for(timeout=120_000)
        stopped_at = int(re.search(r"last tick (\d+)", chart_state(page)).group(1))
        assert paused_at < stopped_at < DEMO_TICKS
        # The run folder says stopped a moment before the job does; then the buttons follow.
        page.locator("code", has_text="stopped").first.wait_for(timeout=60_000)
        resume = page.get_by_role("button", name="Resume")
        deadline = time.time() + 60
        while not resume.is_enabled():  # a stopped run continues from its checkpoint
            assert time.time() < deadline, "Resume never became enabled after Stop"
            time.sleep(0.1)
        assert not page.get_by_role("button", name="Pause").is_enabled()
        page.screenshot(path=ARTIFACTS / "e2e-3-live-stopped.png", full_page=True)

        page.get_by_role("link", name="Explore").click()
        page.get_by_text("Path vs straight line").first.wait_for(timeout=60_000)
        assert "run=demo-" in page.url
        header = page.get_by_text(re.compile(r"Per-layer values at tick \d+")).first
        header.wait_for(timeout=60_000)  # drawn after the charts
        # The last evaluated tick: the stopped one, or (a Stop that lands while a tick is being logged) the
        # last evaluation before it; the demo evaluates every eval_every ticks.
        shown = int(re.search(r"tick (\d+)", header.inner_text()).group(1))
        assert stopped_at - load_preset("mlp-digits-m2m").eval_every < shown <= stopped_at, (shown, stopped_at)
        page.wait_for_timeout(1000)
        page.screenshot(path=ARTIFACTS / "e2e-4-explore.png", full_page=True)
        browser.close()
    (ARTIFACTS / "e2e-timing.txt").write_text(
        f"Home: navigation to the Run the demo button {first_paint:.2f} s (fresh server)\n"
        f"demo: click to first tick {first_tick:.1f} s, to first chart {first_chart:.1f} s; chart states while "
        f"running: {[r.split(' ·')[0] for r in running_states]}\n")


def tick_of(progress_text: str) -> int:
    return int(re.search(r"tick (\d+) / ", progress_text).group(1))
