"""The Sweeps page (issue 17) starts a real `sweep` process and follows the sweep folder it writes."""
import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from llpf_core import load_run

from tests.conftest import REPO, plotly_array, run_cli

sys.path.insert(0, str(REPO / "app"))


@pytest.fixture(scope="module")
def sweep_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("ws")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    run_cli("sweep", "--model", "mlp", "--pairs", "2", "--workers", "2", "--set", "ticks=20", "--set", "save_every=5",
            "--quiet", "--out", home / "sweeps" / "two", env=env, check=True)
    return home


def test_sweeps_page_shows_the_pairs_band_and_strip_plot(sweep_home, monkeypatch):
    monkeypatch.setenv("LLPF_HOME", str(sweep_home))
    at = AppTest.from_file(str(REPO / "app" / "views" / "sweeps.py"), default_timeout=60).run()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["pair"]) == ["seed1-seed2", "seed3-seed4"] and set(table["status"]) == {"finished"}
    charts = at.get("plotly_chart")
    assert len(charts) == 3  # train loss band, test accuracy band, path max vs barrier
    assert not any(b.label == "Resume" for b in at.button)  # a finished sweep has nothing to resume
    summaries = [load_run(sweep_home / "sweeps" / "two" / "runs" / n).info["summary"] for n in table["pair"]]
    path_max = np.array([s["path_max_train_loss"] for s in summaries])
    shown = {m.label: m.value for m in at.metric}
    assert shown["Finished pairs"] == "2 of 2"
    assert shown["Path max train loss"] == f"{path_max.mean():.4g} ± {path_max.std(ddof=1):.2g}"
    # The band's x is the arc-length position of path.csv (at the metrics' ticks), not 1 - distance_rel.
    run = load_run(sweep_home / "sweeps" / "two" / "runs" / "seed1-seed2")
    faint = next(t for t in json.loads(charts[0].proto.spec)["data"] if t.get("name") == "seed1-seed2")
    metrics, path = run.metrics.dropna(subset=["train_loss"]), run.path_table
    assert len(path) > 2 and not np.allclose(plotly_array(faint["x"]), 1 - metrics["distance_rel"])
    np.testing.assert_allclose(plotly_array(faint["x"]), np.interp(metrics["tick"], path["tick"], path["position"]))


def sweep_processes() -> list[int]:
    """The `llpf_core sweep` processes this test process started (the page's background sweeps)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if parent == os.getpid() and b"llpf_core" in cmd and b"sweep" in cmd:
            found.append(int(pid))
    return found


def test_the_start_form_runs_a_sweep_in_the_background_and_the_page_follows_it(tmp_path, monkeypatch):
    monkeypatch.setenv("LLPF_HOME", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    at = AppTest.from_file(str(REPO / "app" / "views" / "sweeps.py"), default_timeout=60).run()
    assert not at.exception and "No sweeps yet" in at.info[0].value
    field = {w.label: w for w in [*at.text_input, *at.number_input]}
    field["Name"].set_value("form")
    field["Pairs"].set_value(1)
    field["First seed"].set_value(7)
    field["Workers"].set_value(1)
    next(b for b in at.button if b.label == "Start sweep").click().run()
    assert not at.exception
    try:
        assert len(sweep_processes()) == 1  # the page started the CLI's sweep as a process of its own
        deadline, status = time.monotonic() + 300, None
        while status not in ("finished", "failed", "interrupted"):  # the page re-reads the folder on every run
            assert time.monotonic() < deadline, f"the sweep did not end: {status}"
            time.sleep(1)
            at.run()
            assert not at.exception and not at.error, at.error[0].value if at.error else at.exception
            status = next((m.value for m in at.metric if m.label == "Status"), None)
        assert status == "finished"
    finally:
        for pid in sweep_processes():
            os.kill(pid, signal.SIGINT)
    table = at.dataframe[0].value
    assert list(table["pair"]) == ["seed7-seed8"] and list(table["status"]) == ["finished"]
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    assert len(charts) == 3 and all(any(t.get("name") == "mean" for t in c["data"]) for c in charts[:2])
    assert (tmp_path / "sweeps" / "form" / "modes" / "seed8.safetensors").exists()


def test_compare_page_takes_a_whole_sweep_as_the_group(sweep_home, monkeypatch):
    monkeypatch.setenv("LLPF_HOME", str(sweep_home))
    at = AppTest.from_file(str(REPO / "app" / "views" / "compare.py"), default_timeout=60).run()
    assert not at.exception
    at.selectbox(key="compare_sweep").set_value("two").run()
    assert not at.exception
    assert list(at.dataframe[0].value["run"]) == ["two/seed1-seed2", "two/seed3-seed4"]
    assert any("Across these runs" in c.value for c in at.caption)


def test_a_refused_start_shows_its_one_line_error_and_keeps_it(tmp_path, monkeypatch):
    monkeypatch.setenv("LLPF_HOME", str(tmp_path))
    at = AppTest.from_file(str(REPO / "app" / "views" / "sweeps.py"), default_timeout=60).run()
    field = {w.label: w for w in [*at.text_input, *at.number_input]}
    field["Name"].set_value("bad")
    field["Model"].set_value("nosuchmodel")
    next(b for b in at.button if b.label == "Start sweep").click().run()
    deadline = time.monotonic() + 120
    while not at.error:  # the refused process exits within seconds; the page shows its stderr
        assert time.monotonic() < deadline and not at.exception, "no error shown"
        time.sleep(0.5)
        at.run()
    assert "unknown model 'nosuchmodel'; choose one of: " in at.error[0].value and at.error[0].value.count("\n") == 0
    at.run()  # still there on the next rerun (the message is re-read from its file, not a drained pipe)
    assert "unknown model 'nosuchmodel'" in at.error[0].value
    assert not (tmp_path / "sweeps" / "bad").exists() and sweep_processes() == []
