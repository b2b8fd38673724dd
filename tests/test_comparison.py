"""The methods comparison over a real sweep (issue 24): llpf_core.comparison's table and bands, and the
Methods page's view of them (AppTest)."""
import json
import os
import sys

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from llpf_core import load_run, method_table, path_bands, read_sweep, sweep_runs
from tests.conftest import REPO, run_cli

sys.path.insert(0, str(REPO / "app"))

METHODS = "linear,rebasin,autoneb"
TINY_NEB = [f"autoneb.cycles.{i}.steps=20" for i in range(5)]


@pytest.fixture(scope="module")
def sweep_home(tmp_path_factory):
    """Two digits pairs (seeds 7201..7204), linear, rebasin and a short autoneb; then rebasin + REPAIR on
    the same modes in a second sweep (one worker: it runs in the sweep's own process, no second Ray to start)."""
    home = tmp_path_factory.mktemp("cmp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    first = home / "sweeps" / "three"
    sets = [x for s in ["curve.points=5", *TINY_NEB] for x in ("--set", s)]
    run_cli("sweep", "--model", "mlp", "--pairs", "2", "--seed", "7201", "--algorithm", METHODS, "--workers", "2",
            *sets, "--quiet", "--out", first, env=env, check=True)
    modes = [first / "modes" / f"seed{s}.safetensors" for s in range(7201, 7205)]
    run_cli("sweep", "--modes", *modes, "--algorithm", "rebasin", "--set", "curve.repair=true", "--set",
            "curve.points=5", "--workers", "1", "--quiet", "--out", home / "sweeps" / "repair", env=env, check=True)
    return home


def test_method_table_gives_mean_std_and_worst_pair_per_method(sweep_home):
    folders = [sweep_home / "sweeps" / n for n in ("three", "repair")]
    runs = sweep_runs(folders)
    table = method_table(runs).set_index("method")
    assert set(table.index) == {"linear", "rebasin", "autoneb", "rebasin + REPAIR"}
    info = read_sweep(folders[0])
    neb = [load_run(folders[0] / p["run"]).info["summary"] for p in info["pairs"] if p["algorithm"] == "autoneb"]
    tops = np.array([s["path_max_train_loss"] for s in neb])
    row = table.loc["autoneb"]
    assert row["pairs"] == 2 and row["path max mean"] == pytest.approx(tops.mean())
    assert row["path max std"] == pytest.approx(tops.std(ddof=1)) and row["worst path max"] == pytest.approx(tops.max())
    assert row["SGD steps mean"] == 100 and table.loc["linear", "SGD steps mean"] == 0
    assert table.loc["linear", "ratio mean"] == pytest.approx(1.0)
    assert table.loc["rebasin + REPAIR", "path max mean"] < table.loc["linear", "path max mean"]
    bands = path_bands(runs)
    assert np.isfinite(bands[["mean", "low", "high"]].to_numpy()).all()
    for _, g in bands.groupby("method"):
        assert (g["low"] <= g["mean"] + 1e-12).all() and (g["mean"] <= g["high"] + 1e-12).all()
    at_a = bands[bands["position"] == 0]["mean"]  # every path starts at the same modes
    assert len(at_a) == 4 and at_a.max() == pytest.approx(at_a.min(), rel=1e-4)


def test_methods_page_shows_the_sweep_comparison(sweep_home, monkeypatch):
    monkeypatch.setenv("LLPF_HOME", str(sweep_home))
    at = AppTest.from_file(str(REPO / "app" / "views" / "methods.py"), default_timeout=60).run()
    assert not at.exception
    shown = at.dataframe[0].value  # no runs on one pair in runs/: only the sweep view
    assert set(shown["method"]) == set(METHODS.split(","))  # the sweep with several methods is preselected
    at.multiselect(key="methods_sweeps").set_value(sorted((sweep_home / "sweeps").iterdir())).run()
    assert not at.exception
    shown = at.dataframe[0].value
    assert "rebasin + REPAIR" in set(shown["method"])
    row = shown[shown["method"] == "autoneb"].iloc[0]
    assert row["path max (mean ± std)"] == f"{row['path max mean']:.4g} ± {row['path max std']:.2g}"
    chart = json.loads(at.get("plotly_chart")[0].proto.spec)
    names = {t["name"] for t in chart["data"] if t.get("showlegend", True)}
    assert names == {f"{m} (2 pairs)" for m in [*METHODS.split(","), "rebasin + REPAIR"]}
