"""End to end: the layer-wise connectivity of the demo pair on the Search page in chromium, then the seeding
button: the editor takes the heuristic's phases, they pass its validation, and the search started from them
records them. Screenshot: test-artifacts/layerwise.png (look at it)."""
import json
import sys
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from llpf_core import load_layerwise, load_mode, load_preset
from tests.conftest import demo_pair_in
from tests.test_e2e_browser import ARTIFACTS, CHROMIUM, REPO, server  # noqa: F401  (server is a fixture)

sys.path.insert(0, str(REPO / "app"))
import layer_order  # noqa: E402  (the app's module, as the page uses it)


def _plotly_data(chart) -> list[dict]:
    return chart.evaluate("el => el.data.map(t => ({type: t.type, y: t.y, x: t.x, name: t.name}))")


def test_the_search_page_shows_the_barriers_and_seeds_the_layer_order(server, tmp_path, digits_modes):  # noqa: F811
    workspace = tmp_path / "workspace"  # the server fixture's LLPF_HOME
    a, b = demo_pair_in(digits_modes, workspace)  # the demo pair, as `llpf train` makes it
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        page.goto(f"{server}/search")
        page.get_by_role("button", name="Compute layer-wise connectivity").click(timeout=120_000)
        heatmap = page.locator(".js-plotly-plot", has=page.get_by_text("A's side (the rest from A)"))
        heatmap.first.wait_for(timeout=300_000)  # the job runs in the server's background, then the page redraws
        traces = _plotly_data(heatmap.first)
        assert [t["type"] for t in traces] == ["heatmap", "heatmap"]
        assert all(t["y"] == ["layers.0", "layers.1", "head"] for t in traces)  # rows in data-flow order
        assert all(t["x"] == ["0", "0.25", "0.5", "0.75", "1"] for t in traces)
        curves = page.locator(".js-plotly-plot", has=page.get_by_text("Barrier of the first k / last k layers"))
        assert {t["name"] for t in _plotly_data(curves.first)} == {
            "first k, A's side", "first k, B's side", "last k, A's side", "last k, B's side"}
        page.wait_for_timeout(1000)  # let plotly finish drawing before the screenshot (not asserted on)
        heatmap.first.screenshot(path=ARTIFACTS / "layerwise.png")

        result = load_layerwise(workspace / "layerwise" / f"{a.stem}--{b.stem}")
        table = layer_order.from_barriers(result, load_preset("mlp-digits-m2m"))
        expected, ticks = layer_order.phases(table, cumulative=True)
        assert layer_order.problems(table, list(load_mode(a).model.state_dict())) == []

        page.get_by_role("button", name="Seed the layer order from the barriers").click()
        page.get_by_text(f"{len(expected)} phase(s), {ticks} ticks in all", exact=False).wait_for(timeout=60_000)
        assert page.get_by_role("radio", name="lowest layer-wise barrier first (heuristic)").is_checked()
        assert page.locator("[data-testid='stAlertContentError']").count() == 0  # the editor's validation passed

        page.get_by_role("textbox", name="Run name").fill("seeded")
        page.get_by_role("button", name="Start search").click()
        run_json = workspace / "runs" / "seeded" / "run.json"
        deadline = time.time() + 300
        while not run_json.exists() and time.time() < deadline:
            time.sleep(0.5)
        phases = json.loads(Path(run_json).read_text())["config"]["phases"]
        assert [p["layers"] for p in phases] == [p.layers for p in expected]
        assert [p["start_tick"] for p in phases] == [p.start_tick for p in expected]
        browser.close()
