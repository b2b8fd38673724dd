"""The method registry, the one config resolver, the run driver's Pause, and a plugin method (issue 23).

``examples/polychain.py`` is loaded as a user's plugin: it runs through the CLI, a sweep (test_sweep.py)
and the Search page with no edit to llpf_core/ or app/.
"""
import json
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

import llpf_core.train
from llpf_core import (
    SearchConfig,
    UserError,
    get_method,
    list_methods,
    load_preset,
    load_run,
    resolve_config,
    run_search,
)
from tests.conftest import REPO, run_cli

POLYCHAIN = REPO / "examples" / "polychain.py"
BUILTIN = ["m2m", "m2o", "to_vs", "cross_sphere", "linear", "bezier", "rebasin"]


def test_every_builtin_method_is_registered_with_a_description():
    assert list_methods()[:7] == BUILTIN
    for name in BUILTIN:
        info = get_method(name)
        assert info.name == name and info.description and "\n" not in info.description
    assert get_method("m2m").walks and not get_method("bezier").walks
    assert get_method("bezier").prefix == "curve" and not get_method("m2o").needs_end
    with pytest.raises(UserError, match=r"unknown algorithm 'm3m'; choose one of: m2m, m2o, to_vs"):
        get_method("m3m")


def test_the_resolver_gives_the_cli_its_config(tmp_path, digits_modes):
    a, b = (m.path for m in digits_modes)
    commands = (("bezier", ["--set", "curve.steps=5"]), ("m2m", ["--ticks", "3", "--seed", "4"]))
    with ThreadPoolExecutor(2) as pool:  # the two commands side by side, one core each
        list(pool.map(lambda c: run_cli("connect", a, b, "--algorithm", c[0], "--out", tmp_path / c[0], "--device",
                                        "cpu", "--quiet", *c[1], check=True), commands))
    for algorithm, extra in commands:
        out = tmp_path / algorithm
        fields = {"ticks": 3, "seed": 4} if algorithm == "m2m" else {}
        resolved = resolve_config("mlp", "digits", algorithm, overrides=extra[1:2] if algorithm == "bezier" else [],
                                  device="cpu", **fields)
        assert resolved.preset == "mlp-digits-m2m"
        assert load_run(out).info["config"] == resolved.config.to_dict()


def test_a_model_without_a_preset_gets_the_generic_m2m_for_every_method_that_allows_it():
    for algorithm in ("m2m", "linear", "bezier"):
        resolved = resolve_config("resnet50x", "digits", algorithm)  # no preset names this model
        assert resolved.preset == "generic-m2m" and resolved.config.algorithm == algorithm
    for algorithm in ("m2o", "cross_sphere"):
        with pytest.raises(UserError, match=f"no {algorithm} preset for model 'resnet50x'"):
            resolve_config("resnet50x", "digits", algorithm)


def test_pause_takes_effect_at_the_next_sgd_step_of_a_bezier_run(tmp_path, digits_modes, monkeypatch):
    """Pause lands inside the training, not at its end: the checkpoint is at the step that drew the batch
    when Pause was pressed, and a TickEvent says so; the run then continues to the same end."""
    cfg = resolve_config("mlp", "digits", "bezier", overrides=["curve.steps=600", "curve.points=5",
                                                                 "checkpoint_every=10000"], device="cpu").config
    pause, stop, events, pressed = threading.Event(), threading.Event(), [], {}
    drawn, original = [0], llpf_core.train.BatchStream.next

    def counted(self):
        drawn[0] += 1
        if drawn[0] == 250:
            pressed["at"] = time.monotonic()
            pause.set()
        return original(self)

    def on_tick(event):
        events.append(event)
        if event.status == "paused":
            pressed["latency_s"] = time.monotonic() - pressed["at"]
            pressed["checkpoint"] = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
            pressed["status"] = load_run(tmp_path / "run").status
            pause.clear()

    monkeypatch.setattr(llpf_core.train.BatchStream, "next", counted)
    run = run_search(*digits_modes, cfg, tmp_path / "run", on_tick=on_tick, stop_event=stop, pause_event=pause)
    assert pressed["status"] == "paused" and pressed["checkpoint"]["step"] == 250
    print(f"bezier pause latency: {pressed['latency_s']:.3f} s")  # reported in the note
    assert [e.tick for e in events if e.status == "paused"] == [250]
    assert run.status == "finished" and run.info["summary"]["sgd_steps"] == 600 and len(run.metrics) == 5


def test_polychain_plugin_runs_through_the_cli_and_resumes_after_a_stop(tmp_path, digits_modes):
    a, b = (m.path for m in digits_modes)
    out = tmp_path / "chain"
    with ThreadPoolExecutor(2) as pool:  # three independent commands, side by side
        good = pool.submit(run_cli, "connect", a, b, "--algorithm", "polychain", "--plugin", POLYCHAIN, "--set",
                           "polychain.steps=300", "--set", "polychain.points=9", "--out", out, "--device", "cpu",
                           "--quiet", check=True)
        bad = pool.submit(run_cli, "connect", a, b, "--algorithm", "polychain", "--plugin", POLYCHAIN, "--set",
                          "polychain.points=2", "--out", tmp_path / "bad")
        missing = pool.submit(run_cli, "connect", a, b, "--algorithm", "polychain", "--out", tmp_path / "bad")
        good.result()
        bad, missing = bad.result(), missing.result()
    run = load_run(out)
    s = run.info["summary"]
    assert run.status == "finished" and run.info["algorithm"] == "polychain"
    assert run.config.plugin_settings["polychain"]["steps"] == 300 and s["sgd_steps"] == 300
    assert list(run.metrics["tick"]) == list(range(9)) and len(run.points()) == 9 and len(run.path_table) == 9
    assert s["path_max_train_loss"] < s["barrier"] / 5  # the trained bend goes round the barrier
    assert bad.returncode == 2 and "polychain needs points >= 3" in bad.stderr and bad.stderr.count("\n") == 1
    assert missing.returncode == 2 and "unknown algorithm 'polychain'" in missing.stderr
    assert not (tmp_path / "bad").exists()


def test_a_stopped_plugin_run_resumes_to_the_uninterrupted_result(tmp_path, digits_modes, monkeypatch):
    from llpf_core.plugins import load_plugin
    load_plugin(str(POLYCHAIN))
    cfg = resolve_config("mlp", "digits", "polychain", overrides=["polychain.steps=120", "polychain.points=5",
                                                                    "checkpoint_every=40"], device="cpu").config
    whole = run_search(*digits_modes, cfg, tmp_path / "whole")
    stop = threading.Event()
    drawn, original = [0], llpf_core.train.BatchStream.next

    def counted(self):
        drawn[0] += 1
        if drawn[0] == 70:
            stop.set()
        return original(self)

    monkeypatch.setattr(llpf_core.train.BatchStream, "next", counted)
    cut = run_search(*digits_modes, cfg, tmp_path / "cut", stop_event=stop)
    monkeypatch.undo()
    assert cut.status == "stopped" and not cut.points()
    resumed = run_search(None, None, None, tmp_path / "cut", resume=True)
    assert resumed.status == "finished" and resumed.info["resumed_from_step"] == 70
    pd.testing.assert_frame_equal(resumed.path_table, whole.path_table, rtol=1e-5)


def test_the_search_page_offers_the_plugin_method_and_its_own_settings(tmp_path, digits_modes, monkeypatch):
    from llpf_core import plugins
    sys.path.insert(0, str(REPO / "app"))
    import state
    (tmp_path / "modes").mkdir()
    for mode in digits_modes:
        shutil.copy(mode.path, tmp_path / "modes" / mode.path.name)
    monkeypatch.setenv("LLPF_HOME", str(tmp_path))
    monkeypatch.setenv("LLPF_PLUGINS", str(POLYCHAIN))  # as a user starts the dashboard with a plugin
    monkeypatch.setattr(plugins, "_env_done", False)  # this test process read LLPF_PLUGINS before
    at = AppTest.from_file(str(REPO / "app" / "views" / "search.py"), default_timeout=60).run()
    assert not at.exception
    assert "polychain" in at.radio(key="algorithm").options
    at.radio(key="algorithm").set_value("polychain").run()
    assert not at.exception and not at.error and not at.data_editor
    for setting, value in (("steps", 50), ("points", 7)):  # one input per field of PolychainSettings
        at.number_input(key=f"polychain_{setting}").set_value(value).run()
    at.text_input(key="run_name").input("chain").run()
    at.button(key="start_search").click().run()
    job = state.registry().wait("chain", 300)
    assert not at.exception and job is not None and job.status == "finished", job
    run = load_run(tmp_path / "runs" / "chain")
    assert run.info["algorithm"] == "polychain" and run.info["summary"]["sgd_steps"] == 50
    assert len(run.metrics) == 7 and run.config.plugin_settings["polychain"]["points"] == 7


def test_a_plugin_may_not_take_a_builtin_methods_name(tmp_path, digits_modes):
    plugin = tmp_path / "clash.py"
    plugin.write_text("from llpf_core import Method, register_method\n"
                      "register_method('bezier', description='mine')(Method)\n")
    a, b = (m.path for m in digits_modes)
    proc = run_cli("connect", a, b, "--plugin", plugin, "--out", tmp_path / "run")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "registers method 'bezier', which LLPF Explorer already has; rename it" in proc.stderr


def test_a_run_json_config_round_trips_with_the_plugins_settings(digits_modes):
    from llpf_core.plugins import load_plugin
    load_plugin(str(POLYCHAIN))
    cfg = resolve_config("mlp", "digits", "polychain", overrides=["polychain.lr=0.01"]).config
    again = SearchConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.to_dict()["polychain"]["lr"] == 0.01
    assert "polychain" not in load_preset("mlp-digits-m2m").to_dict()


def test_explore_and_compare_list_runs_of_every_method(tmp_path, digits_modes, monkeypatch):
    sys.path.insert(0, str(REPO / "app"))
    base = resolve_config("mlp", "digits", "m2m", overrides=["ticks=10"], device="cpu").config
    for algorithm, extra in (("linear", {}), ("bezier", {"steps": 20}), ("rebasin", {})):
        cfg = resolve_config("mlp", "digits", algorithm, overrides=["curve.points=5"] +
                             [f"curve.{k}={v}" for k, v in extra.items()], device="cpu").config
        run_search(*digits_modes, cfg, tmp_path / "runs" / algorithm)
    run_search(*digits_modes, base, tmp_path / "runs" / "m2m")
    monkeypatch.setenv("LLPF_HOME", str(tmp_path))
    at = AppTest.from_file(str(REPO / "app" / "views" / "explore.py"), default_timeout=60).run()
    assert not at.exception
    assert sorted(at.selectbox(key="explore_run").options) == ["bezier (finished)", "linear (finished)",
                                                               "m2m (finished)", "rebasin (finished)"]
    at.selectbox(key="explore_run").set_value("bezier").run()
    assert not at.exception and at.select_slider(key="explore_tick_bezier").options == ["0", "1", "2", "3", "4"]
    at = AppTest.from_file(str(REPO / "app" / "views" / "compare.py"), default_timeout=60).run()
    assert not at.exception and sorted(at.multiselect(key="compare_runs").options) == [
        "bezier", "linear", "m2m", "rebasin"]
