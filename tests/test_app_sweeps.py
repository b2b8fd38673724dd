"""The Sweeps page (issue 17) follows a real sweep folder written by the CLI's `sweep` process."""
import os
import sys

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import REPO, run_cli

sys.path.insert(0, str(REPO / "app"))


@pytest.fixture(scope="module")
def sweep_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("ws")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    run_cli("sweep", "--model", "mlp", "--pairs", "2", "--workers", "2", "--set", "ticks=20", "--quiet",
            "--out", home / "sweeps" / "two", env=env, check=True)
    return home


def test_sweeps_page_shows_the_pairs_band_and_strip_plot(sweep_home, monkeypatch):
    monkeypatch.setenv("LLPF_HOME", str(sweep_home))
    at = AppTest.from_file(str(REPO / "app" / "views" / "sweeps.py"), default_timeout=60).run()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["pair"]) == ["seed1-seed2", "seed3-seed4"] and set(table["status"]) == {"finished"}
    assert len(at.get("plotly_chart")) == 3  # train loss band, test accuracy band, path max vs barrier
    assert not any(b.label == "Resume" for b in at.button)  # a finished sweep has nothing to resume


def test_compare_page_takes_a_whole_sweep_as_the_group(sweep_home, monkeypatch):
    monkeypatch.setenv("LLPF_HOME", str(sweep_home))
    at = AppTest.from_file(str(REPO / "app" / "views" / "compare.py"), default_timeout=60).run()
    assert not at.exception
    at.selectbox(key="compare_sweep").set_value("two").run()
    assert not at.exception
    assert list(at.dataframe[0].value["run"]) == ["two/seed1-seed2", "two/seed3-seed4"]
    assert any("Across these runs" in c.value for c in at.caption)
