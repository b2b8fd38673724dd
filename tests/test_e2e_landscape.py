"""End to end: Explore's Landscape tab in chromium, for a demo-like digits run made with the CLI.

The pair is the demo's (digits MLPs, seeds 1 and 2: the session's digits_modes, copied under the demo's
names) and the run the CLI demo's M2M search (`connect`, run in the test's process), in the server's
workspace. The page computes the plane in the background and draws its contour; then Home explains with it.
Screenshots go to test-artifacts/landscape.png (the chart) and landscape-home.png (look at them).
"""
from playwright.sync_api import sync_playwright

from tests.conftest import demo_pair_in, llpf_in_process
from tests.test_e2e_browser import ARTIFACTS, CHROMIUM, server  # noqa: F401  (server is a fixture)

RUN = "demo-landscape"  # a demo-* name: Home explains with a demo run's plane


def test_the_landscape_tab_computes_and_draws_the_plane(server, tmp_path, digits_modes):  # noqa: F811
    workspace = tmp_path / "workspace"  # the server fixture's LLPF_HOME
    a, b = demo_pair_in(digits_modes, workspace)
    llpf_in_process("connect", a, b, "--preset", "mlp-digits-m2m", "--set", "save_every=10",  # the demo saves 31 points
                    "--out", workspace / "runs" / RUN)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(f"{server}/explore?run={RUN}")
        page.get_by_role("tab", name="Landscape").click(timeout=120_000)
        page.get_by_text("No plane computed for this run yet", exact=False).wait_for(timeout=60_000)
        page.get_by_role("button", name="Compute landscape").click()
        chart = page.locator(".js-plotly-plot", has=page.locator(".contour"))
        chart.first.wait_for(timeout=300_000)  # the job runs in the server's background, then the page redraws
        page.get_by_text("Loss over the plane through A, B and P", exact=False).first.wait_for(timeout=60_000)
        page.get_by_role("button", name="grid.csv").wait_for(timeout=60_000)
        page.wait_for_timeout(1000)  # let plotly finish drawing before the screenshot (not asserted on)
        chart.first.screenshot(path=ARTIFACTS / "landscape.png")
        legend = chart.first.inner_text()
        for name in ("straight line", "path", "A, B, P"):
            assert name in legend
        assert (workspace / "runs" / RUN / "landscape").is_dir()

        page.goto(server)  # Home now explains with this demo run's real plane instead of the sketch
        page.locator(".js-plotly-plot", has=page.locator(".contour")).first.wait_for(timeout=120_000)
        page.get_by_text(f"The demo's own plane ({RUN})", exact=False).wait_for(timeout=60_000)
        page.wait_for_timeout(1000)
        page.screenshot(path=ARTIFACTS / "landscape-home.png", full_page=True)
        browser.close()
