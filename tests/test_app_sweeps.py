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

from llpf_core import UserError, load_run, read_sweep

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


def sweeps_page(workspace: str | None = None) -> AppTest:
    at = AppTest.from_file(str(REPO / "app" / "views" / "sweeps.py"), default_timeout=60)
    if workspace:
        at.query_params["workspace"] = workspace
    return at.run()


def fill(at: AppTest, name: str, pairs: int = 1, seed: int = 7, workers: int = 1) -> AppTest:
    at.text_input(key="sweep_name").set_value(name)
    at.number_input(key="sweep_pairs").set_value(pairs)
    at.number_input(key="sweep_seed").set_value(seed)
    at.number_input(key="sweep_workers").set_value(workers)
    return at


def test_the_start_form_runs_a_sweep_in_the_background_and_the_page_follows_it(tmp_path, monkeypatch):
    monkeypatch.setenv("LLPF_HOME", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    at = sweeps_page()
    assert not at.exception and "No sweeps yet" in at.info[0].value
    assert at.selectbox(key="sweep_model").value == "mlp" and "digits" in at.selectbox(key="sweep_dataset").options
    assert at.multiselect(key="sweep_methods").value == ["m2m"]
    fill(at, "form").button(key="start_sweep").click().run()
    assert not at.exception and not at.error
    try:
        assert len(sweep_processes()) == 1  # the page started the CLI's sweep as a process of its own
        assert at.selectbox(key="sweep_folder").value.name == "form"  # the new sweep is on show
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
    sweep = read_sweep(tmp_path / "sweeps" / "form")
    assert sweep["spec"]["preset"] == ""  # no preset chosen: each method takes its default for the model
    from llpf_core import load_preset
    run = load_run(tmp_path / "sweeps" / "form" / sweep["pairs"][0]["run"])
    assert run.config.phases == load_preset("mlp-digits-m2m").phases


def test_compare_page_takes_a_whole_sweep_as_the_group(sweep_home, monkeypatch):
    monkeypatch.setenv("LLPF_HOME", str(sweep_home))
    at = AppTest.from_file(str(REPO / "app" / "views" / "compare.py"), default_timeout=60).run()
    assert not at.exception
    at.selectbox(key="compare_sweep").set_value("two").run()
    assert not at.exception
    assert list(at.dataframe[0].value["run"]) == ["two/seed1-seed2", "two/seed3-seed4"]
    assert any("Across these runs" in c.value for c in at.caption)


@pytest.mark.parametrize("name, problem", [("../outside", "plain folder name"), ("/tmp/evil", "plain folder name"),
                                           ("two", "exists already")])
def test_a_refused_start_shows_its_one_line_error_at_once_and_starts_nothing(sweep_home, monkeypatch, name, problem):
    monkeypatch.setenv("LLPF_HOME", str(sweep_home))
    before = sorted(sweep_home.parent.rglob("*"))
    at = sweeps_page()
    fill(at, name).button(key="start_sweep").click().run()
    assert not at.exception and len(at.error) == 1
    assert problem in at.error[0].value and "\n" not in at.error[0].value
    assert sorted(sweep_home.parent.rglob("*")) == before and sweep_processes() == []


def test_a_sweep_from_the_page_is_bounded_by_the_servers_caps(tmp_path, monkeypatch):
    """The page's fields stop at LLPF_SWEEP_MAX_PAIRS and LLPF_SWEEP_MAX_WORKERS, and the registry refuses
    more whatever a client sends."""
    from jobs import Registry
    monkeypatch.setenv("LLPF_HOME", str(tmp_path))
    monkeypatch.setenv("LLPF_SWEEP_MAX_PAIRS", "3")
    monkeypatch.setenv("LLPF_SWEEP_MAX_WORKERS", "2")
    at = sweeps_page()
    assert at.number_input(key="sweep_pairs").max == 3 and at.number_input(key="sweep_workers").max == 2
    registry = Registry(limit=1)
    for pairs, workers, problem in ((4, 1, "1 to 3 pairs"), (1, 3, "1 to 2 workers"), (0, 1, "1 to 3 pairs")):
        with pytest.raises(UserError, match=problem):
            registry.start_sweep(tmp_path / "sweeps", "big", model="mlp", dataset="digits", pairs=pairs,
                                 workers=workers)
    with pytest.raises(UserError, match="preset mlp-digits-m2m is for model 'mlp', not 'cnn'"):
        registry.start_sweep(tmp_path / "sweeps", "wrong", model="cnn", dataset="digits", pairs=1,
                             preset="mlp-digits-m2m")
    assert not (tmp_path / "sweeps").exists() and registry.jobs() == []


def test_a_sweep_from_the_page_takes_a_job_slot_and_only_its_workspace_sees_it(digits_modes, tmp_path, monkeypatch):
    """LLPF_MAX_JOBS=1: a search waits behind a sweep started from the page, the sidebar counts the sweep,
    another workspace neither lists nor stops it, and Stop on the page frees the slot for the search."""
    import dataclasses

    import jobs

    from llpf_core import load_preset
    monkeypatch.setenv("LLPF_HOME", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(jobs, "_SERVER", jobs.Registry(limit=1))
    registry, alice = jobs.server_registry(), str((tmp_path / "alice").resolve())
    at = sweeps_page("alice")
    # bezier pairs run one after another, thousands of SGD steps each: the sweep is still running when Stop
    # comes (an 8-pair LLPF sweep of the digits MLP, batched, can finish before the page gets there)
    at.multiselect(key="sweep_methods").set_value(["bezier"])
    fill(at, "slot", pairs=2).button(key="start_sweep").click().run()
    assert not at.exception and not at.error
    try:
        assert registry.get("sweep-slot", alice).status in ("starting", "running")
        cfg = dataclasses.replace(load_preset("mlp-digits-m2m"), ticks=10, device="cpu")
        behind = registry.visitor(alice).start_search("behind", digits_modes[0].path, digits_modes[1].path, cfg,
                                                     tmp_path / "alice" / "runs" / "behind")
        assert behind.status == "queued"
        for workspace, mine in (("alice", True), ("bob", False)):
            home = AppTest.from_file(str(REPO / "app" / "Home.py"), default_timeout=60)
            home.query_params["workspace"] = workspace
            captions = [c.value for c in home.run().sidebar.caption]
            assert "Jobs on this server: 1 running of 1 slot(s), 1 queued" in captions, captions
            assert any(c.startswith("sweep-slot: ") for c in captions) == mine
            assert ("behind: queued (#1 in the queue)" in captions) == mine
        runs = AppTest.from_file(str(REPO / "app" / "views" / "runs.py"), default_timeout=60)
        runs.query_params["workspace"] = "alice"
        assert runs.run().selectbox(key="live_run").options == ["behind"]  # a sweep is not a run
        bob = sweeps_page("bob")
        assert not bob.exception and "No sweeps yet" in bob.info[0].value
        assert not [b for b in bob.button if b.key == "sweep_stop"]
        deadline = time.monotonic() + 300  # a generous bound, not a timing assertion: Ray up, pairs running
        while not (tmp_path / "alice" / "sweeps" / "slot" / "sweep.json").exists():
            assert time.monotonic() < deadline and registry.get("sweep-slot", alice).live
            time.sleep(0.5)
        at.run()
        at.button(key="sweep_stop").click().run()
        assert not at.exception and not at.error
        assert registry.get("sweep-slot", alice).status == "stopping"
        assert registry.wait("sweep-slot", 300, owner=alice).status == "stopped"
        assert registry.wait("behind", 300, owner=alice).status == "finished"  # the freed slot
        at.run()
        assert next(m.value for m in at.metric if m.label == "Status") == "interrupted"
        assert any(b.key == "sweep_resume" for b in at.button) and any("Resume finishes" in c.value for c in at.caption)
    finally:
        for pid in sweep_processes():
            os.kill(pid, signal.SIGINT)
