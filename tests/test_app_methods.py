"""The Methods view on a real workspace: an m2m run and a linear run on the same digits pair."""
import dataclasses
import sys
import time

from streamlit.testing.v1 import AppTest

from llpf_core import load_preset, load_run, run_search
from tests.conftest import REPO, workspace_with

sys.path.insert(0, str(REPO / "app"))  # as `streamlit run app/Home.py` does for the app's modules


def test_methods_view_overlays_runs_on_one_pair(digits_modes, tmp_path, monkeypatch):
    a, b = workspace_with(digits_modes, tmp_path)
    base = dataclasses.replace(load_preset("mlp-digits-m2m"), ticks=20, save_every=10, device="cpu")
    run_search(a, b, base, tmp_path / "runs" / "llpf")
    run_search(a, b, dataclasses.replace(base, algorithm="linear"), tmp_path / "runs" / "line")
    monkeypatch.setenv("LLPF_HOME", str(tmp_path))
    at = AppTest.from_file(str(REPO / "app" / "views" / "methods.py"), default_timeout=60).run()
    assert not at.exception
    table = at.dataframe[0].value
    assert sorted(table["method"]) == ["linear", "m2m"]
    line = table[table["method"] == "linear"].iloc[0]
    assert line["barrier / path max"] == 1.0 and line["SGD steps"] == 0  # as `check` says it: barrier / path max
    llpf = table[table["method"] == "m2m"].iloc[0]
    assert llpf["barrier / path max"] > 1 and "ratio" not in table


def test_one_click_runs_the_missing_methods_on_the_pair(digits_modes, tmp_path, monkeypatch):
    a, b = workspace_with(digits_modes, tmp_path)
    linear = dataclasses.replace(load_preset("mlp-digits-m2m"), algorithm="linear", device="cpu")
    run_search(a, b, linear, tmp_path / "runs" / "line")
    monkeypatch.setenv("LLPF_HOME", str(tmp_path))
    import jobs  # the five searches queue and run two at a time (one per core) on this test's own registry
    monkeypatch.setattr(jobs, "_SERVER", jobs.Registry(limit=2))
    at = AppTest.from_file(str(REPO / "app" / "views" / "methods.py"), default_timeout=60).run()
    assert not at.exception
    at.button(key="run_missing").click().run()
    assert not at.exception
    deadline = time.monotonic() + 600  # a generous bound on a slow machine, not a timing assertion
    while len(at.dataframe[0].value) < 6 and time.monotonic() < deadline:
        time.sleep(1)
        at.run()
        assert not at.exception
    assert sorted(at.dataframe[0].value["method"]) == ["autoneb", "bezier", "linear", "m2m", "rebasin",
                                                       "rebasin + REPAIR"]
    assert not [b for b in at.button if b.key == "run_missing"]  # nothing is missing any more


def test_search_page_sets_a_bezier_curve_instead_of_a_layer_order(digits_modes, tmp_path, monkeypatch):
    import state
    workspace_with(digits_modes, tmp_path)
    monkeypatch.setenv("LLPF_HOME", str(tmp_path))
    at = AppTest.from_file(str(REPO / "app" / "views" / "search.py"), default_timeout=60).run()
    assert at.data_editor  # LLPF: the layer-order editor
    at.radio(key="algorithm").set_value("bezier").run()
    assert not at.exception and not at.error
    assert not at.data_editor and not at.multiselect  # no layer order for a curve
    at.number_input(key="curve_points").set_value(6).run()
    at.number_input(key="curve_steps").set_value(40).run()
    at.text_input(key="run_name").input("curve").run()
    at.button(key="start_search").click().run()
    assert not at.exception
    job = state.registry().wait("curve", 300)
    assert job is not None and job.status == "finished", job
    run = load_run(tmp_path / "runs" / "curve")
    assert run.info["algorithm"] == "bezier" and run.config.curve.points == 6 and run.config.curve.steps == 40
    assert len(run.path_table) == 6 and run.info["summary"]["sgd_steps"] == 40
