"""The dashboard: chart builders, the layer-order editor and uploads as plain functions, then every
page through Streamlit's AppTest on a real workspace (two digits modes and a finished run)."""
import dataclasses
import pickle
import sys
import time

import pandas as pd
import plotly.graph_objects as go
import pytest
from streamlit.testing.v1 import AppTest

from llpf_core import UserError, list_landscapes, load_landscape, load_mode, load_preset, load_run, run_search
from tests.conftest import REPO, workspace_with

sys.path.insert(0, str(REPO / "app"))  # as `streamlit run app/Home.py` does for the app's modules

import charts  # noqa: E402
import layer_order  # noqa: E402
import state  # noqa: E402
import uploads  # noqa: E402


@pytest.fixture(scope="module")
def workspace(digits_modes, tmp_path_factory):
    """A workspace with the two digits modes and one finished 40-tick M2M run between them."""
    root = tmp_path_factory.mktemp("workspace")
    modes = workspace_with(digits_modes, root)
    cfg = dataclasses.replace(load_preset("mlp-digits-m2m"), ticks=40, save_every=10)
    run_search(modes[0], modes[1], cfg, root / "runs" / "first")
    return root


@pytest.fixture
def ws(workspace, monkeypatch):
    monkeypatch.setenv("LLPF_HOME", str(workspace))
    return workspace


def app(page: str) -> AppTest:
    return AppTest.from_file(str(REPO / "app" / page), default_timeout=30)


def wait_for(registry, name: str, timeout: float = 300):  # generous: a loaded machine, not a speed test
    job = registry.wait(name, timeout)
    assert job is not None and not job.live, job
    return job


# --- pure parts -------------------------------------------------------------------------------------------

def test_charts_build_from_a_real_run(workspace):
    run = load_run(workspace / "runs" / "first")
    m, layers, cont, base = run.metrics, run.layers, run.continuity, run.baseline
    loss = charts.loss_figure(m, base)
    assert [t.name for t in loss.data] == ["rolling (train mode)", "eval mode"]
    assert loss.layout.shapes[0].y0 == pytest.approx(base["train_loss"].max())  # the barrier line
    names = list(dict.fromkeys(layers["layer"]))
    dist = charts.layer_distance_figure(layers, [names[0]])
    assert len(dist.data) == len(names) and dist.data[0].line.width > dist.data[1].line.width
    heat = charts.layer_heatmap(layers, [names[0]])
    assert heat.data[0].z.shape == (len(names), layers["tick"].nunique()) and heat.data[0].y[0].startswith("▶")
    assert len(charts.variance_figure(layers).data) == len(names)
    detail = charts.continuity_detail_figure(cont, 10)
    assert list(detail.data[0].x) == sorted(cont.loc[cont["tick"] == 10, "alpha"])
    path = charts.path_vs_line_figure(m, base, marker=20)
    assert path.data[0].x[0] == 0 and path.data[0].x[-1] == 1
    for fig in (charts.accuracy_figure(m), charts.test_figure(m), charts.continuity_figure(m)):
        assert isinstance(fig, go.Figure) and len(fig.data) >= 2
    distance = charts.distance_figure(m)
    assert distance.data[0].y[0] == pytest.approx(1.0) and distance.data[0].y[-1] < 1.0  # it falls toward B
    assert dist.layout.legend.orientation == "v"  # the layers' legend stands beside the plot, off the title


def test_young_runs_redraw_their_charts_every_second_then_every_five():
    assert state.chart_refresh_s(None) == state.YOUNG_CHART_REFRESH_S == 1.0  # no run.json yet
    assert state.chart_refresh_s(pd.DataFrame({"wall_s": []})) == 1.0  # no row yet
    assert state.chart_refresh_s(pd.DataFrame({"wall_s": [0.1, 29.0]})) == 1.0
    assert state.chart_refresh_s(pd.DataFrame({"wall_s": [0.1, 30.0]})) == state.CHART_REFRESH_S == 5.0


def test_charts_thin_long_runs_and_band_several():
    ticks = pd.DataFrame({"tick": range(100_001), "train_loss": 0.1, "train_loss_rolling": 0.1})
    thinned = charts.thin(ticks)
    assert len(thinned) <= charts.MAX_POINTS and thinned["tick"].iloc[0] == 0 and thinned["tick"].iloc[-1] == 100_000
    assert len(charts.loss_figure(ticks).data[0].x) <= charts.MAX_POINTS
    a = pd.DataFrame({"tick": range(11), "train_loss": [0.0] * 11})
    b = pd.DataFrame({"tick": range(0, 201, 20), "train_loss": [1.0] * 11})  # other length, same positions
    fig = charts.compare_figure({"a": a, "b": b}, "train_loss")
    mean = fig.data[-1]
    assert mean.name == "mean" and set(mean.y) == {0.5}


def test_layer_order_reorders_merges_splits_and_validates(digits_modes):
    model = digits_modes[0].model
    names = list(model.state_dict())
    cfg = load_preset("mlp-digits-m2m")
    table = layer_order.from_data_flow(model, cfg)
    assert list(table["layers"]) == ["layers.0", "layers.1", "head"]
    phases, ticks = layer_order.phases(table, cumulative=True)
    assert [p.layers for p in phases] == [["layers.0"], ["layers.0", "layers.1"], ["layers.0", "layers.1", "head"]]
    assert [p.start_tick for p in phases] == [0, 100, 200] and ticks == 300
    moved = layer_order.move(table, [2], -1)
    assert list(moved["layers"]) == ["layers.0", "head", "layers.1"]
    merged = layer_order.merge(table, [0, 1])
    assert list(merged["layers"]) == ["layers.0, layers.1", "head"] and list(merged["ticks"]) == [200, 100]
    assert list(layer_order.split(merged, 0, names)["layers"]) == ["layers.0", "layers.1", "head"]
    whole = layer_order.from_preset(cfg)
    assert list(layer_order.split(whole, 0, names)["layers"]) == ["layers", "head"]  # '*' into modules
    assert layer_order.problems(table, names) == []
    bad = table.assign(layers=["layers.0", "nope", "head"], ticks=[10, 0, 10])
    found = layer_order.problems(bad, names)
    assert any("'nope' matches no layer" in p for p in found) and any("ticks must be at least 1" in p for p in found)


def test_uploads_are_validated_and_kept_inside_the_workspace(digits_modes, tmp_path):
    modes = tmp_path / "modes"
    assert uploads.safe_name("../../x.safetensors") == "x.safetensors"
    assert uploads.safe_name("..\\evil name!.SAFETENSORS") == "evil_name_.safetensors"
    mode = uploads.save_upload(digits_modes[0].path.read_bytes(), "../../a.safetensors", modes)
    assert mode.path == modes / "a.safetensors" and load_mode(mode.path).meta.seed == 1
    assert not (tmp_path.parent / "a.safetensors").exists()
    marker = tmp_path / "unpickled"

    class Boom:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    for data, what in ((pickle.dumps(Boom()), "pickle"), (b"", "empty"), (b"\x00" * 100, "corrupt"),
                       (digits_modes[0].path.read_bytes()[:500], "truncated")):
        with pytest.raises(UserError) as e:
            uploads.save_upload(data, f"{what}.safetensors", modes)
        assert "\n" not in str(e.value) and ".upload-" not in str(e.value)
    with pytest.raises(UserError, match="already exists"):
        uploads.save_upload(digits_modes[1].path.read_bytes(), "a.safetensors", modes)
    assert not marker.exists()
    assert sorted(p.name for p in modes.iterdir()) == ["a.safetensors"]  # no temp files left


# --- pages ------------------------------------------------------------------------------------------------

def test_home_renders_and_runs_the_demo(ws, monkeypatch):
    import state
    # The preset's 300 ticks instead of the dashboard's smoother 1500: the same demo job (train, search, plane).
    monkeypatch.setenv("LLPF_DEMO_SET", "ticks=300 phases.0.step_a=0.02")
    at = app("Home.py").run()
    assert not at.exception
    assert "LLPF Explorer" in at.title[0].value
    assert {m.label: m.value for m in at.metric}["Modes"] == "2"
    at.button(key="run_demo").click().run()
    assert not at.exception
    demo = [j for j in state.registry().jobs() if j.kind == "demo"][-1]
    job = wait_for(state.registry(), demo.name)
    assert job.status == "finished", job
    assert load_run(ws / "runs" / demo.name).status == "finished"
    planes = list_landscapes(load_run(ws / "runs" / demo.name))  # the demo computes the default plane too
    assert len(planes) == 1 and load_landscape(load_run(ws / "runs" / demo.name), planes[0]).complete


def test_modes_page_trains_uploads_and_checks_independence(ws, digits_modes):
    import state
    at = app("views/modes.py").run()
    assert not at.exception
    assert set(at.dataframe[0].value["file"]) >= {"mlp-seed1.safetensors", "mlp-seed2.safetensors"}
    at.selectbox(key="ind_a").select("mlp-seed1.safetensors").run()
    at.selectbox(key="ind_b").select("mlp-seed2.safetensors").run()
    at.button(key="check_independence").click().run()
    assert not at.exception and "independent" in at.success[0].value

    at.text_input(key="train_seeds").input("7")
    at.button[0].click()  # the form's Train button
    at.run()
    job = [j for j in state.registry().jobs() if j.kind == "train"][-1]
    assert wait_for(state.registry(), job.name).status == "finished"
    assert load_mode(ws / "modes" / "mlp-digits-seed7.safetensors").meta.seed == 7

    at.file_uploader(key="upload").upload("../../up.safetensors", digits_modes[1].path.read_bytes()).run()
    assert not at.exception and (ws / "modes" / "up.safetensors").exists()
    at = app("views/modes.py").run()
    at.file_uploader(key="upload").upload("bad.safetensors", pickle.dumps({"a": 1})).run()
    assert not at.exception and "bad.safetensors" in at.error[0].value
    assert not (ws / "modes" / "bad.safetensors").exists()


def test_search_page_edits_the_layer_order_and_starts_a_search(ws):
    import state
    at = app("views/search.py").run()
    assert not at.exception
    assert at.selectbox(key="end_mode").options  # a compatible end mode is offered
    at.radio(key="layer_source").set_value("follow_data_flow (one group per module)").run()
    assert not at.exception and list(at.data_editor[0].value["layers"]) == ["layers.0", "layers.1", "head"]
    at.multiselect(key="layer_rows").set_value([0, 1]).run()
    at.button(key="merge").click().run()
    assert list(at.data_editor[0].value["layers"]) == ["layers.0, layers.1", "head"]
    at.multiselect(key="layer_rows").set_value([0]).run()
    at.button(key="split").click().run()
    assert list(at.data_editor[0].value["layers"]) == ["layers.0", "layers.1", "head"]
    at.multiselect(key="layer_rows").set_value([2]).run()
    at.button(key="move_up").click().run()
    assert list(at.data_editor[0].value["layers"]) == ["layers.0", "head", "layers.1"]
    assert not at.error
    at.text_input(key="run_name").input("from-search").run()
    at.button(key="start_search").click().run()
    assert not at.exception
    job = wait_for(state.registry(), "from-search")
    assert job.status == "finished", job
    run = load_run(ws / "runs" / "from-search")
    assert [p.layers for p in run.config.phases] == [["layers.0"], ["layers.0", "head"],
                                                     ["layers.0", "head", "layers.1"]]


def test_runs_page_shows_a_run_and_its_views(ws):
    at = app("views/runs.py")
    at.query_params["run"] = "first"
    at.run()
    assert not at.exception
    assert at.selectbox(key="live_run").value == "first"
    assert "finished" in at.markdown[0].value or any("finished" in m.value for m in at.markdown)
    assert len(at.get("plotly_chart")) == 4  # loss, distance, accuracy, test
    for view, charts_shown in (("Layers", 3), ("Continuity", 2)):
        at.segmented_control(key="live_view").set_value(view).run()
        assert not at.exception and len(at.get("plotly_chart")) == charts_shown
    assert at.button(key="resume").disabled and at.button(key="stop").disabled


def test_explore_page_scrubs_and_offers_downloads(ws):
    at = app("views/explore.py")
    at.query_params["run"] = "first"
    at.run()
    assert not at.exception
    at.select_slider(key="explore_tick_first").set_value(20).run()
    assert not at.exception
    labels = [b.label for b in at.get("download_button")]
    assert "Point at tick 20 (.safetensors)" in labels
    assert {"metrics.csv", "layers.csv", "continuity.csv", "baseline.csv", "path-vs-line.html"} <= set(labels)


def test_compare_page_summarises_runs(ws):
    at = app("views/compare.py").run()
    assert not at.exception
    at.multiselect(key="compare_runs").set_value(["first"]).run()
    table = at.dataframe[0].value
    assert list(table["run"]) == ["first"] and table["max train loss"].iloc[0] < table["barrier"].iloc[0]


def test_pages_explain_an_empty_workspace(tmp_path, monkeypatch):
    monkeypatch.setenv("LLPF_HOME", str(tmp_path / "empty"))
    for page in ("Home.py", "views/modes.py", "views/search.py", "views/runs.py", "views/explore.py",
                 "views/compare.py"):
        at = app(page).run()
        assert not at.exception, page
    assert "No runs" in at.info[0].value


def test_a_failed_run_shows_its_error_and_the_app_keeps_working(ws):
    import state
    modes = sorted((ws / "modes").glob("mlp-seed*.safetensors"))
    cfg = dataclasses.replace(load_preset("mlp-digits-m2m"), ticks=30)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr=1e6))
    owner = str(ws.resolve())  # the workspace's job, as the Runs page looks it up
    state.registry().visitor(owner).start_search("diverged", modes[0], modes[1], cfg, ws / "runs" / "diverged")
    job = state.registry().wait("diverged", 300, owner=owner)
    assert job is not None and not job.live, job
    assert job.status == "failed" and "diverged" in job.error
    at = app("views/runs.py")
    at.query_params["run"] = "diverged"
    at.run()
    assert not at.exception and "diverged" in at.error[0].value
    assert not at.button(key="resume").disabled  # a failed run can be resumed from its checkpoint


def test_a_cli_run_is_followed_live_and_resumed_from_the_dashboard(ws):
    """A search started with the CLI shows on the Runs page from its folder; once stopped (Ctrl-C),
    Resume continues it from its checkpoint in the dashboard."""
    import signal
    import subprocess

    import state
    modes = sorted((ws / "modes").glob("mlp-seed*.safetensors"))
    out = ws / "runs" / "from-cli"
    proc = subprocess.Popen([sys.executable, "-m", "llpf_core", "connect", *map(str, modes), "--out", str(out),
                             "--ticks", "100000", "--quiet"], cwd=REPO)
    try:
        deadline = time.time() + 120
        while not (out / "metrics.csv").exists() or len(load_run(out).metrics) < 3:
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.2)
        at = app("views/runs.py")
        at.query_params["run"] = "from-cli"
        at.run()
        assert not at.exception
        assert any("following its run folder" in c.value for c in at.caption)
        assert at.button(key="stop").disabled and at.button(key="resume").disabled  # not this dashboard's job
        assert "tick" in at.get("progress")[0].proto.text
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(120) == 0
    assert load_run(out).status == "stopped"
    stopped_at = int(load_run(out).metrics["tick"].iloc[-1])
    at.run()
    assert not at.button(key="resume").disabled
    at.button(key="resume").click().run()
    assert not at.exception
    until = time.time() + 120
    while int(load_run(out).metrics["tick"].iloc[-1]) < stopped_at + 5:
        assert time.time() < until
        time.sleep(0.2)
    state.registry().stop("from-cli")
    assert state.registry().wait("from-cli", 120).status == "stopped"
    ticks = list(load_run(out).metrics["tick"])
    assert ticks == list(range(len(ticks)))  # every tick once, in order, across the two processes
