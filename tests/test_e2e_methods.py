"""End to end: the Methods page in chromium, for the demo pair after linear, bezier and rebasin ran on it.

The pair and the three runs are made with the CLI into the server's workspace; the page must overlay them
and list them in its table. The screenshot goes to test-artifacts/methods.png (look at it).
"""
import re
import subprocess
import sys

from playwright.sync_api import sync_playwright

from tests.conftest import REPO
from tests.test_e2e_browser import ARTIFACTS, CHROMIUM, server  # noqa: F401  (server is a fixture)


def cli(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "llpf_core", *args, "--quiet"], cwd=REPO, capture_output=True,
                          text=True, env={"OMP_NUM_THREADS": "1", **__import__("os").environ})
    assert done.returncode == 0, done.stderr


def test_methods_page_overlays_the_three_methods_on_the_demo_pair(server, tmp_path):  # noqa: F811
    workspace = tmp_path / "workspace"  # the server fixture's LLPF_HOME
    a, b = (workspace / "modes" / f"mlp-digits-seed{s}.safetensors" for s in (1, 2))  # the demo's pair
    for seed, mode in ((1, a), (2, b)):
        cli("train", "--model", "mlp", "--dataset", "digits", "--seed", str(seed), "--out", str(mode))
    for method, extra in (("linear", []), ("bezier", ["--set", "curve.steps=300"]), ("rebasin", [])):
        cli("connect", str(a), str(b), "--algorithm", method, *extra, "--out", str(workspace / "runs" / method))
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{server}/methods")
        page.get_by_text("Train loss along the path").first.wait_for(timeout=120_000)
        page.locator(".js-plotly-plot").nth(1).wait_for(timeout=60_000)
        # The registry's other methods between two modes are the missing ones (m2m, autoneb, rebasin + REPAIR).
        page.get_by_role("button", name=re.compile(r"Run the missing methods \(m2m, ")).wait_for(timeout=60_000)
        page.wait_for_timeout(1000)  # let plotly finish drawing before the screenshot (not asserted on)
        page.screenshot(path=ARTIFACTS / "methods.png", full_page=True)
        legend = page.locator(".js-plotly-plot").first.inner_text()
        for method in ("linear", "bezier", "rebasin"):
            assert method in legend
        browser.close()
