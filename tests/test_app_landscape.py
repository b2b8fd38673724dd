"""Explore's Landscape tab on real runs: the plane computed by a background job of the dashboard's registry,
drawn when the job ends, with the tick slider's marker and other runs on the same pair overlaid; and Home
showing the demo's real plane."""
import dataclasses
import os
import shutil
import sys
import threading
import time

import plotly.graph_objects as go
import plotly.io
import pytest
from streamlit.testing.v1 import AppTest

from llpf_core import SearchConfig, compute_landscape, list_landscapes, load_landscape, load_preset, load_run, \
    project_pair_runs, run_search
from tests.conftest import REPO, plotly_array, workspace_with

sys.path.insert(0, str(REPO / "app"))
import state  # noqa: E402


@pytest.fixture
def ws(digits_modes, tmp_path, monkeypatch):
    """A workspace with an M2M run ``first`` (points at ticks 0, 10, 20) and a linear run on the same pair."""
    modes = workspace_with(digits_modes, tmp_path)
    cfg = dataclasses.replace(load_preset("mlp-digits-m2m"), ticks=20, save_every=10, device="cpu")
    run_search(modes[0], modes[1], cfg, tmp_path / "runs" / "first")
    run_search(modes[0], modes[1], SearchConfig(algorithm="linear", device="cpu"), tmp_path / "runs" / "line")
    monkeypatch.setenv("LLPF_HOME", str(tmp_path))
    return tmp_path


def explore() -> AppTest:
    at = AppTest.from_file(str(REPO / "app" / "views" / "explore.py"), default_timeout=120)
    at.query_params["run"] = "first"
    return at.run()


def figures(at: AppTest) -> list[go.Figure]:
    """The page's plotly figures as it sent them."""
    return [plotly.io.from_json(c.proto.spec) for c in at.get("plotly_chart")]


def figure(at: AppTest) -> go.Figure:
    """The landscape chart."""
    found = [f for f in figures(at) if f.data and f.data[0].type == "contour"]
    assert len(found) == 1, [f.data[0].type for f in figures(at)]
    return found[0]


def names(fig: go.Figure) -> list[str]:
    return [t.name for t in fig.data]


def test_the_landscape_tab_computes_the_plane_in_the_background_and_draws_it(ws):
    at = explore()
    assert not at.exception
    assert [t.label for t in at.tabs] == ["Path", "Landscape", "Layer-wise"]
    assert not [f for f in figures(at) if f.data[0].type == "contour"]
    at.button(key="ls_compute_first").click().run()
    assert not at.exception and not at.error
    job = state.registry().wait("landscape-first", 120)
    assert job.kind == "landscape" and job.status == "finished", job
    assert job.owner == str(ws.resolve()) and job.progress.tick == job.progress.total == 21 * 21

    at.run()  # the next rerun (the follow fragment asks for one) draws the plane from the run folder
    assert not at.exception
    run = load_run(ws / "runs" / "first")
    [tick] = list_landscapes(run)
    plane = load_landscape(run, tick)
    assert plane.complete and tick in (10, 20)
    fig = figure(at)
    assert {"straight line", "A, B, P", "tick 20"} <= set(names(fig))  # tick 20: the slider's marker
    [path] = [t for t in fig.data if (t.name or "").startswith("path (off-plane residual up to")]
    assert list(plotly_array(path.customdata)[:, 0]) == [q["tick"] for q in plane.info["projected"]]
    assert {b.label for b in at.get("download_button")} >= {"landscape.html", "grid.csv"}

    at.select_slider(key="explore_tick_first").set_value(10).run()
    assert "tick 10" in names(figure(at))
    assert not at.button(key="ls_compute_first").disabled


def test_a_partial_plane_says_so_and_the_next_compute_continues_it(ws):
    run = load_run(ws / "runs" / "first")
    stop = threading.Event()

    def on_progress(done, total):
        if done:
            stop.set()  # after the first chunk: an interrupted plane
    compute_landscape(run, 10, on_progress=on_progress, stop_event=stop)
    done = len(load_landscape(run, 10).grid)
    assert 0 < done < 21 * 21
    at = explore()
    assert any(f"{done} of {21 * 21} grid points computed" in c.value for c in at.caption)
    at.selectbox(key="ls_point_first").select(10).run()
    at.button(key="ls_compute_first").click().run()
    assert state.registry().wait("landscape-first", 120).status == "finished"
    assert load_landscape(run, 10).complete


def test_other_runs_on_the_pair_are_overlaid_with_their_residuals(ws, monkeypatch):
    import llpf_core.landscape
    run = load_run(ws / "runs" / "first")
    compute_landscape(run, 20)
    expected = project_pair_runs(run, 20)["line"]
    projected_runs = []  # the runs the page projects: each once, until one changes
    real = llpf_core.landscape.project_run
    monkeypatch.setattr(llpf_core.landscape, "project_run",
                        lambda plane, r: projected_runs.append(r.name) or real(plane, r))
    at = explore()
    assert at.multiselect(key="ls_others_first").options == ["linear: line"]
    assert "linear: line" not in names(figure(at))  # optional: off by default
    at.multiselect(key="ls_others_first").select("line").run()
    assert not at.exception
    [line] = [t for t in figure(at).data if t.name == "linear: line"]
    xs, ys = plotly_array(line.x), plotly_array(line.y)
    assert list(xs) == pytest.approx([q["x"] for q in expected]) and len(xs) > 2
    assert plotly_array(line.customdata)[:, 1].max() < 1e-4  # the straight line lies in the plane: residual ~0
    assert abs(ys).max() < 1e-4 and xs.min() < 0.01 and xs.max() > 0.99  # along the x axis, A to B
    assert projected_runs == ["line"]
    at.select_slider(key="explore_tick_first").set_value(10).run()  # a rerun: the projections come from the cache
    assert projected_runs == ["line"] and "linear: line" in names(figure(at))
    later = time.time_ns() + 10**9
    os.utime(ws / "runs" / "line" / "points", ns=(later, later))  # as when the run saves a point
    at.run()
    assert projected_runs == ["line", "line"]


def test_home_explains_with_the_demos_real_plane_once_computed(ws):
    home = AppTest.from_file(str(REPO / "app" / "views" / "home.py"), default_timeout=120).run()
    assert not home.exception and len(home.get("image")) == 1 and not home.get("plotly_chart")  # the sketch
    shutil.copytree(ws / "runs" / "first", ws / "runs" / "demo-20260101-000000")
    compute_landscape(load_run(ws / "runs" / "demo-20260101-000000"))
    home.run()
    assert not home.exception and not home.get("image")
    assert [f.data[0].type for f in figures(home)] == ["contour"]


def test_a_landscape_job_holds_a_slot_stops_and_keeps_its_rows(ws):
    from jobs import Registry
    registry = Registry(limit=1)
    run = load_run(ws / "runs" / "first")
    registry.start_landscape(run, 10, grid=201)  # 40,401 grid points: far more than the test lets it do
    short = dataclasses.replace(load_preset("mlp-digits-m2m"), ticks=10, device="cpu")
    modes = sorted((ws / "modes").glob("*.safetensors"))
    assert registry.start_search("after", modes[0], modes[1], short, ws / "runs" / "after").status == "queued"
    deadline = time.time() + 120
    while registry.get("landscape-first").progress.tick == 0:
        assert time.time() < deadline, registry.get("landscape-first")
        time.sleep(0.01)
    registry.stop("landscape-first")
    job = registry.wait("landscape-first", 120)
    rows = len(load_landscape(run, 10).grid)
    assert job.status == "stopped" and 0 < rows < 201 * 201 and job.message.startswith(f"{rows} of {201 * 201}")
    assert registry.wait("after", 120).status == "finished"  # queued behind the landscape, then ran


def test_a_plane_that_cannot_be_spanned_fails_with_its_reason_on_the_page(ws):
    at = explore()
    at.selectbox(key="ls_point_first").select(0).run()  # the point at tick 0 is A itself: no plane
    at.button(key="ls_compute_first").click().run()
    assert state.registry().wait("landscape-first", 120).status == "failed"
    at.run()
    assert any("lies on the straight line" in e.value for e in at.error)
    assert not list_landscapes(load_run(ws / "runs" / "first"))  # nothing written
