"""End to end, serving to others: a real `streamlit run` server and Debian's chromium through Playwright.
Two browser sessions in different workspaces run the demo at the same time and each sees only its own
run; with LLPF_ACCESS_TOKEN the page shows nothing but the prompt until the right token."""
import os
import re
import subprocess
import sys
import time
import urllib.request

import pytest
from playwright.sync_api import sync_playwright

from tests.conftest import REPO, demo_pair_in
from tests.test_e2e_browser import CHROMIUM, free_port


@pytest.fixture
def serve(tmp_path):
    """Start a server with extra environment variables; returns its URL. Stopped after the test."""
    procs = []

    def start(**env) -> str:
        port = free_port()
        full = {**os.environ, "LLPF_HOME": str(tmp_path / "root"), "LLPF_DEMO_SET": "ticks=100000", **env}
        log = open(tmp_path / "streamlit.log", "w")
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app/serve.py", "--server.port",
                                 str(port), "--server.headless", "true"], cwd=REPO, env=full, stdout=log,
                                stderr=subprocess.STDOUT)
        procs.append((proc, log))
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 90
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    return url
            except OSError:
                pass
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "streamlit.log").read_text()
            time.sleep(0.5)

    yield start
    for proc, log in procs:
        proc.terminate()
        proc.wait(30)
        log.close()


def start_demo(page, url: str, workspace: str) -> str:
    page.goto(f"{url}/?workspace={workspace}")
    page.get_by_role("button", name="Run the demo").click(timeout=60_000)
    page.wait_for_url("**/runs?run=demo-*", timeout=60_000)
    return re.search(r"run=(demo-[^&]+)", page.url).group(1)


def test_two_workspaces_run_the_demo_at_once_and_see_only_their_own(serve, tmp_path, digits_modes):
    for me in ("alice", "bob"):  # returning visitors: each workspace holds the demo's pair, which the demo reuses
        demo_pair_in(digits_modes, tmp_path / "root" / me)
    url = serve(LLPF_MAX_JOBS="2")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        alice, bob = browser.new_context().new_page(), browser.new_context().new_page()
        runs = {"alice": start_demo(alice, url, "alice"), "bob": start_demo(bob, url, "bob")}
        assert runs["alice"] != runs["bob"]
        for page, me, other in ((alice, "alice", "bob"), (bob, "bob", "alice")):
            page.get_by_text("last tick", exact=False).first.wait_for(timeout=300_000)  # both searching
            page.get_by_text("status running", exact=False).first.wait_for(timeout=300_000)
            assert page.get_by_text(runs[other]).count() == 0
            page.get_by_test_id("stSidebar").get_by_text(f"{runs[me]}: running").wait_for(timeout=60_000)
            assert page.get_by_test_id("stSidebar").get_by_text(runs[other]).count() == 0
        for page in (alice, bob):
            page.get_by_test_id("stMainBlockContainer").get_by_role("button", name="Stop").click()
            page.get_by_text("status stopped", exact=False).first.wait_for(timeout=120_000)
        browser.close()
    for me, other in (("alice", "bob"), ("bob", "alice")):
        names = [p.name for p in (tmp_path / "root" / me / "runs").iterdir()]
        assert names == [runs[me]]


def test_the_access_token_prompt(serve, tmp_path):
    url = serve(LLPF_ACCESS_TOKEN="class-token-7")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        page = browser.new_page()
        page.goto(url)
        field = page.get_by_label("Access token")
        field.wait_for(timeout=60_000)
        assert page.get_by_role("button", name="Run the demo").count() == 0
        field.fill("wrong")
        page.get_by_role("button", name="Enter").click()
        page.get_by_text("Wrong access token", exact=False).wait_for(timeout=60_000)
        assert page.get_by_role("button", name="Run the demo").count() == 0
        assert not (tmp_path / "root").exists()  # nothing ran before the token
        field.fill("class-token-7")
        page.get_by_role("button", name="Enter").click()
        page.get_by_role("button", name="Run the demo").wait_for(timeout=60_000)
        page.get_by_role("link", name="Runs").click()
        page.get_by_text("No runs yet", exact=False).wait_for(timeout=60_000)  # remembered across pages
        browser.close()
