"""Layer-wise connectivity in the dashboard on real runs: Explore's tab computes it in a background job of
the registry and draws it from the run folder; the Search page's button seeds the editor with the heuristic's
groups, which pass its validation."""
import dataclasses
import sys

import plotly.io
import pytest
from streamlit.testing.v1 import AppTest

from llpf_core import load_layerwise, load_mode, load_preset, run_search
from tests.conftest import REPO, workspace_with

sys.path.insert(0, str(REPO / "app"))
import layer_order  # noqa: E402
import state  # noqa: E402


@pytest.fixture
def ws(digits_modes, tmp_path, monkeypatch):
    """A workspace with the digits pair and a short M2M run ``first`` on it."""
    modes = workspace_with(digits_modes, tmp_path)
    cfg = dataclasses.replace(load_preset("mlp-digits-m2m"), ticks=5, device="cpu")
    run_search(modes[0], modes[1], cfg, tmp_path / "runs" / "first")
    monkeypatch.setenv("LLPF_HOME", str(tmp_path))
    return tmp_path


def heatmaps(at: AppTest) -> list:
    figs = [plotly.io.from_json(c.proto.spec) for c in at.get("plotly_chart")]
    return [f for f in figs if f.data and f.data[0].type == "heatmap"]


def test_explore_computes_the_layerwise_view_in_the_background(ws):
    at = AppTest.from_file(str(REPO / "app" / "views" / "explore.py"), default_timeout=120)
    at.query_params["run"] = "first"
    at.run()
    assert not at.exception and [t.label for t in at.tabs][-1] == "Layer-wise"
    assert not heatmaps(at)
    at.button(key="lw_compute_run-first").click().run()
    assert not at.exception and not at.error
    job = state.registry().wait("layerwise-run-first", 120)
    assert job.kind == "layerwise" and job.status == "finished", job
    assert job.run_dir == ws / "runs" / "first" / "layerwise" and job.progress.tick == job.progress.total > 0
    at.run()
    assert not at.exception
    [fig] = heatmaps(at)
    result = load_layerwise(ws / "runs" / "first")
    assert [list(t.y) for t in fig.data] == [result.layers, result.layers]
    assert {b.label for b in at.get("download_button")} >= {"layerwise.csv", "summary.csv", "layerwise.html"}


def test_the_search_page_seeds_the_editor_from_the_barriers(ws):
    at = AppTest.from_file(str(REPO / "app" / "views" / "search.py"), default_timeout=120)
    at.run()
    assert not at.exception
    key = "pair-mlp-seed1--mlp-seed2"
    assert not [b for b in at.button if b.key == "lw_seed"]  # nothing to seed from yet
    at.button(key=f"lw_compute_{key}").click().run()
    job = state.registry().wait(f"layerwise-{key}", 120)
    assert job.status == "finished", job
    at.run()
    at.button(key="lw_seed").click().run()
    assert not at.exception and not at.error
    assert at.radio(key="layer_source").value == "lowest layer-wise barrier first (heuristic)"
    result = load_layerwise(ws / "layerwise" / "mlp-seed1--mlp-seed2")
    table = at.session_state["layer_table"]
    assert table.equals(layer_order.from_barriers(result, load_preset("mlp-digits-m2m")))
    assert layer_order.problems(table, list(load_mode(ws / "modes" / "mlp-seed1.safetensors").model.state_dict())) == []
    assert sorted(p for cell in table["layers"] for p in cell.split(", ")) == sorted(result.layers)
    assert at.toggle(key="cumulative_lowest").value
