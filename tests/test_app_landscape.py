"""Explore's Landscape section on a real run: compute the plane from the page, then its contour figure."""
import dataclasses
import shutil
import sys

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import REPO
from llpf_core import load_landscape, load_preset, load_run, run_search

sys.path.insert(0, str(REPO / "app"))
import landscape_chart  # noqa: E402


@pytest.fixture
def ws(digits_modes, tmp_path, monkeypatch):
    (tmp_path / "modes").mkdir()
    for mode in digits_modes:
        shutil.copy(mode.path, tmp_path / "modes" / mode.path.name)
    modes = sorted((tmp_path / "modes").glob("*.safetensors"))
    cfg = dataclasses.replace(load_preset("mlp-digits-m2m"), ticks=20, save_every=10, device="cpu")
    run_search(modes[0], modes[1], cfg, tmp_path / "runs" / "first")
    monkeypatch.setenv("LLPF_HOME", str(tmp_path))
    return tmp_path


def test_explore_computes_and_draws_the_landscape(ws):
    at = AppTest.from_file(str(REPO / "app" / "views" / "explore.py"), default_timeout=120).run()
    assert not at.exception
    at.button(key="ls_compute_first").click().run()
    assert not at.exception and not at.error
    run = load_run(ws / "runs" / "first")
    plane = load_landscape(run, 20 if (run.path / "landscape" / "plane-000020").exists() else 10)
    assert plane.complete and len(plane.grid) == 21 * 21
    assert any(b.label == "landscape.html" for b in at.get("download_button"))
    fig = landscape_chart.landscape_figure(plane.grid, plane.info, marker=10)
    names = [t.name for t in fig.data]
    assert fig.data[0].type == "contour" and "straight line" in names and "path" in names and "A, B, P" in names
    path = next(t for t in fig.data if t.name == "path")
    assert list(path.customdata[:, 0]) == [q["tick"] for q in plane.info["projected"]]
