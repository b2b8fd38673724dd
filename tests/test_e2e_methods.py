"""End to end: the Methods page in chromium, for the demo pair after linear, bezier and rebasin ran on it.

The pair is the session's digits_modes copied into the server's workspace under the demo's names, and the
three runs are made with the `connect` command (run in the test's process) into it; the page must overlay
them and list them in its table. The screenshot goes to test-artifacts/methods.png (look at it).
"""
import re

from playwright.sync_api import sync_playwright

from tests.conftest import demo_pair_in, llpf_in_process
from tests.test_e2e_browser import ARTIFACTS, CHROMIUM, server  # noqa: F401  (server is a fixture)


def test_methods_page_overlays_the_three_methods_on_the_demo_pair(server, tmp_path, digits_modes):  # noqa: F811
    workspace = tmp_path / "workspace"  # the server fixture's LLPF_HOME
    a, b = demo_pair_in(digits_modes, workspace)  # the demo's pair
    for method, extra in (("linear", []), ("bezier", ["--set", "curve.steps=300"]), ("rebasin", [])):
        llpf_in_process("connect", a, b, "--algorithm", method, *extra, "--out", workspace / "runs" / method)
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
