"""The rough edges a new user hit (issue 26, items 4-11): chart axes and legends, what "normalised position"
means, Compare and path methods, Home's device, Methods' wording, Runs before its first tick, the upload
message, Search's messages, clipped text and the Import default. Charts as plain functions, pages through
Streamlit's AppTest on a real workspace."""
import dataclasses
import shutil
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest
import torch
from streamlit.testing.v1 import AppTest

from llpf_core import load_preset, load_run, run_search
from tests.conftest import REPO, workspace_with

sys.path.insert(0, str(REPO / "app"))  # as `streamlit run app/Home.py` does for the app's modules
import charts  # noqa: E402
import layer_order  # noqa: E402


@pytest.fixture(scope="module")
def workspace(digits_modes, tmp_path_factory):
    """Two digits modes, an M2M run, a linear and a bezier run between them."""
    root = tmp_path_factory.mktemp("workspace")
    a, b = workspace_with(digits_modes, root)
    base = dataclasses.replace(load_preset("mlp-digits-m2m"), ticks=40, save_every=10, device="cpu")
    run_search(a, b, base, root / "runs" / "llpf")
    run_search(a, b, dataclasses.replace(base, algorithm="linear"), root / "runs" / "line")
    bezier = dataclasses.replace(base, algorithm="bezier")
    run_search(a, b, dataclasses.replace(bezier, curve=dataclasses.replace(bezier.curve, steps=60)),
               root / "runs" / "curve")
    return root


@pytest.fixture
def ws(workspace, monkeypatch):
    monkeypatch.setenv("LLPF_HOME", str(workspace))
    return workspace


def page(name: str) -> AppTest:
    return AppTest.from_file(str(REPO / "app" / name), default_timeout=60)


# --- item 4: charts ---------------------------------------------------------------------------------------

def test_accuracy_axes_run_from_0_to_1_in_percent_and_legends_sit_under_the_plot(workspace):
    run = load_run(workspace / "runs" / "llpf")
    m = run.metrics
    acc = charts.accuracy_figure(m)
    assert tuple(acc.layout.yaxis.range) == (0, 1.02) and acc.layout.yaxis.tickformat == ".0%"
    test = charts.test_figure(m)  # accuracy on the right axis, loss on the left
    assert tuple(test.layout.yaxis2.range) == (0, 1.02) and test.layout.yaxis2.tickformat == ".0%"
    assert test.layout.yaxis.range is None
    detail = charts.continuity_detail_figure(run.continuity, 10)
    assert tuple(detail.layout.yaxis2.range) == (0, 1.02) and detail.layout.yaxis2.title.text == "accuracy"
    for fig in (charts.loss_figure(m, run.baseline), charts.distance_figure(m), acc, test, detail,
                charts.continuity_figure(m)):
        assert fig.layout.legend.y < 0 and fig.layout.legend.yanchor == "top"  # below, clear of the toolbar


def test_methods_overlay_gives_each_method_its_colour_and_llpf_the_boldest_line(workspace):
    paths = [(f"{name} run", name, load_run(workspace / "runs" / folder).path_table)
             for name, folder in (("m2m", "llpf"), ("linear", "line"), ("bezier", "curve"))]
    fig = charts.methods_figure(paths, "test_acc", "Test accuracy", barrier=None, emphasised=frozenset({"m2m"}))
    colours = [t.line.color for t in fig.data]
    assert len(set(colours)) == 3
    assert fig.data[-1].name == "m2m run"  # drawn last: on top
    assert fig.data[-1].line.width > max(t.line.width for t in fig.data[:-1])
    assert tuple(fig.layout.yaxis.range) == (0, 1.02) and fig.layout.legend.y < 0
    loss = charts.methods_figure(paths, "train_loss", "Train loss", barrier=0.5)
    assert loss.layout.shapes[0].y0 == 0.5 and "arc length" in loss.layout.xaxis.title.text


# --- item 5: normalised position, Compare -----------------------------------------------------------------

def test_normalised_position_is_path_csv_arc_length_everywhere():
    metrics = pd.DataFrame({"tick": [0, 10, 20, 30, 40], "train_loss": [0.0, 1.0, 2.0, 3.0, 4.0]})
    path = pd.DataFrame({"tick": [0, 20, 40], "position": [0.0, 0.8, 1.0]})  # most of the length early
    assert list(charts.position(metrics, path)) == pytest.approx([0.0, 0.4, 0.8, 0.9, 1.0])
    assert list(charts.position(metrics)) == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])  # no path.csv yet
    fig = charts.path_vs_line_figure(metrics, None, marker=20, path=path)
    assert list(fig.data[0].x) == pytest.approx([0.0, 0.4, 0.8, 0.9, 1.0]) and fig.layout.shapes[0].x0 == 0.8


def test_compare_band_lies_under_the_runs_and_needs_three(workspace):
    a = pd.DataFrame({"position": np.linspace(0, 1, 11), "train_loss": 0.0})
    b = a.assign(train_loss=1.0)
    two = charts.compare_figure({"a": a, "b": b}, "train_loss")
    assert [t.name for t in two.data] == ["a", "b", "mean"]  # no band retracing the two runs
    assert two.data[0].line.color != two.data[1].line.color
    three = charts.compare_figure({"a": a, "b": b, "c": a.assign(train_loss=2.0)}, "train_loss")
    assert three.data[0].name == "mean ± std" and [t.name for t in three.data[1:]] == ["a", "b", "c", "mean"]


def test_compare_page_picks_path_method_runs_on_arc_length(ws):
    at = page("views/compare.py").run()
    assert not at.exception
    assert {"llpf", "line", "curve"} <= set(at.multiselect(key="compare_runs").options)
    at.multiselect(key="compare_runs").set_value(["llpf", "line", "curve"]).run()
    at.selectbox(key="compare_metric").set_value("test_acc").run()
    assert not at.exception
    table = at.dataframe[0].value
    assert set(table["algorithm"]) == {"m2m", "linear", "bezier"}
    llpf = load_run(ws / "runs" / "llpf")
    expected = charts.position(llpf.metrics, llpf.path_table)
    assert not np.allclose(expected, charts.position(llpf.metrics))  # arc length differs from tick fraction
    at.selectbox(key="compare_metric").set_value("train_loss_rolling").run()  # LLPF's alone
    assert not at.exception and any("not every method logs it" in c.value for c in at.caption)


# --- items 6, 7, 8: Home, Methods, Runs -------------------------------------------------------------------

def test_home_device_metric_agrees_with_the_sidebar(ws):
    at = page("Home.py").run()
    assert not at.exception
    device = {m.label: m.value for m in at.metric}["Device"]
    assert device == ("GPU" if torch.cuda.is_available() else "CPU")


def test_methods_page_says_barrier_over_path_max_as_the_cli_does(ws):
    at = page("views/methods.py").run()
    assert not at.exception
    table = at.dataframe[0].value
    assert "ratio" not in table
    llpf = table[table["method"] == "m2m"].iloc[0]
    assert llpf["barrier / path max"] == pytest.approx(llpf["barrier"] / llpf["path max"])
    assert llpf["barrier / path max"] > 1  # the path's highest loss is many times lower than the barrier


def test_runs_page_status_line_does_not_repeat_itself(ws):
    import state
    a, b = sorted((ws / "modes").glob("*.safetensors"))
    cfg = dataclasses.replace(load_preset("mlp-digits-m2m"), ticks=10, device="cpu")
    mine = state.registry().visitor(str(ws.resolve()))  # the workspace's jobs, as the Runs page looks them up
    mine.start_search("job-run", a, b, cfg, ws / "runs" / "job-run")
    job = mine.registry.wait("job-run", 300, owner=str(ws.resolve()))
    assert job is not None and job.status == "finished" and job.message.startswith("finished"), job
    at = page("views/runs.py")
    at.query_params["run"] = "job-run"
    at.run()
    assert not at.exception
    status = next(m.value for m in at.markdown if m.value.startswith("**Status:**"))
    assert status.count("finished") == 1, status


def test_runs_page_explains_an_empty_chart_area(ws):
    empty = ws / "runs" / "empty"  # a run that ended before its first row: run.json and a bare header
    shutil.copytree(ws / "runs" / "line", empty)
    (empty / "metrics.csv").write_text((empty / "metrics.csv").read_text().splitlines()[0] + "\n")
    try:
        at = page("views/runs.py")
        at.query_params["run"] = "empty"
        at.run()
        assert not at.exception
        assert any("Nothing to chart" in i.value for i in at.info)
        assert not at.get("plotly_chart")
    finally:
        shutil.rmtree(empty)


# --- item 9: upload ---------------------------------------------------------------------------------------

def test_a_text_file_uploaded_as_safetensors_gets_a_plain_message(tmp_path):
    import uploads
    from llpf_core import UserError
    with pytest.raises(UserError) as e:
        uploads.save_upload(b"just some text, not tensors\n" * 20, "my_model.safetensors", tmp_path)
    message = str(e.value)
    assert message.startswith("my_model.safetensors is not a valid safetensors mode file (")
    assert message.count("my_model.safetensors") == 1 and ".upload-" not in message
    assert list(tmp_path.iterdir()) == []


# --- item 10: Search --------------------------------------------------------------------------------------

def test_every_bad_layer_pattern_and_a_zero_tick_group_are_named():
    names = ["layers.0.weight", "layers.0.bias", "head.weight", "head.bias"]
    table = pd.DataFrame([{"layers": "nope1, layers.0, nope2", "ticks": 0, "step_a": 0.01, "step_f": 0.0,
                           "step_c": 0.0}])
    problems = layer_order.problems(table, names)
    assert any("'nope1'" in p for p in problems) and any("'nope2'" in p for p in problems)
    assert "group 1: ticks must be at least 1" in problems


def test_search_page_names_settings_by_their_labels(ws):
    at = page("views/search.py").run()
    assert not at.exception
    max_iters = next(n for n in at.number_input if n.label == "max iters")
    max_iters.set_value(1).run()
    assert not at.exception
    errors = [e.value.replace("\\", "") for e in at.error]  # as shown: the markdown escapes removed
    assert any("“max iters” (1) must be >= “min iters”" in e for e in errors), errors
    assert not any("train." in e for e in errors)


def test_search_editor_does_not_revert_a_zero_tick_count_silently(ws):
    at = page("views/search.py").run()
    editor = at.data_editor[0]
    columns = str(editor.proto.columns)
    assert "\"ticks\"" in columns and "min_value" not in columns  # it keeps what was typed; problems() names it


# --- item 11: clipped text, Import default ---------------------------------------------------------------

def test_the_home_sketch_keeps_its_text_inside_the_picture():
    svg = ET.parse(REPO / "assets" / "images" / "llpf-overview.svg").getroot()
    width = float(svg.get("viewBox").split()[2])
    for text in svg.iter("{http://www.w3.org/2000/svg}text"):
        size, x = float(text.get("font-size")), float(text.get("x"))
        estimate = 0.55 * size * len(text.text)  # Helvetica's mean advance is about 0.55 em
        left = x - estimate if text.get("text-anchor") == "end" else x
        assert 0 <= left and left + estimate <= width, text.text


def test_modes_page_shows_problems_in_full_and_imports_the_usual_model(ws):
    (ws / "modes" / "broken.safetensors").write_bytes(b"not a mode")
    try:
        at = page("views/modes.py").run()
        assert not at.exception
        assert "problem" not in at.dataframe[0].value
        assert any(e.value.startswith("broken.safetensors: ") and "not a valid safetensors" in e.value
                   for e in at.error)
        assert at.selectbox(key="import_model").value == "mlp"  # the workspace's modes are MLPs
    finally:
        (ws / "modes" / "broken.safetensors").unlink()
