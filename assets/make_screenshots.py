"""Make the README's screenshots from a real demo in a real dashboard.

Starts ``llpf dashboard`` on a free port with a fresh workspace, clicks **Run the demo** in Debian's
chromium (Playwright), photographs the Runs page while the search is live, waits for the demo to finish
and compute its landscape plane, and photographs that plane on Explore's Landscape tab.

    python assets/make_screenshots.py [--out assets/screenshots]

The demo is slowed (``LLPF_DEMO_SET``: 2,500 ticks of half the usual step) so the live view has
a run to show; it takes a minute or two on 2 CPU cores.
"""
import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
ALL_CHARTS_DRAWN = """n => { const plots = [...document.querySelectorAll('.js-plotly-plot')];
    return plots.length >= n && plots.filter(p => p.offsetParent !== null)  // not those in a hidden tab
    .every(p => getComputedStyle(p).visibility === 'visible'); }"""
SLOW_DEMO = "ticks=2500 phases.0.step_a=0.002"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_dashboard(workspace: Path, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "LLPF_DEMO_SET": SLOW_DEMO, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "llpf_core", "dashboard", "--port", str(port),
                             "--workspace", str(workspace)], env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 120
    while True:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read() == b"ok":
                return proc
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            raise SystemExit(f"the dashboard did not start:\n{log.read_text()}")
        time.sleep(0.5)


def shoot(url: str, out: Path) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        page = browser.new_page(viewport={"width": 1300, "height": 900}, device_scale_factor=1)
        page.goto(url)
        page.get_by_role("button", name="Run the demo").click()
        page.wait_for_url("**/runs?run=demo-*", timeout=60_000)
        page.get_by_text(re.compile(r"last tick ([3-9]\d\d|\d{4,}) · status running")).first.wait_for(timeout=300_000)
        page.wait_for_function(ALL_CHARTS_DRAWN, arg=2, timeout=120_000)  # plotly hides a chart while drawing
        page.screenshot(path=out / "live-run.png")
        page.get_by_text("status finished", exact=False).first.wait_for(timeout=600_000)
        # Home draws the newest demo's landscape plane once the demo job has computed it after the search.
        deadline = time.time() + 600
        while True:
            page.goto(url)
            chart = page.locator(".js-plotly-plot").first
            try:
                chart.wait_for(timeout=20_000)
                break
            except PlaywrightTimeout:
                if time.time() > deadline:
                    raise
        page.wait_for_timeout(1000)
        chart.screenshot(path=out / "landscape.png")
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "assets" / "screenshots")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        proc = start_dashboard(Path(tmp) / "workspace", port, Path(tmp) / "dashboard.log")
        try:
            shoot(f"http://127.0.0.1:{port}/", args.out)
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"wrote {args.out / 'live-run.png'} and {args.out / 'landscape.png'}")


if __name__ == "__main__":
    main()
