"""The dashboard's job registry: a search's whole life in the background, and two searches at once."""
import dataclasses
import json
import sys
import time

import pytest

from llpf_core import UserError, load_preset, load_run, run_search
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "app"))

from jobs import Registry  # noqa: E402


def until(predicate, timeout: float = 60, what: str = "") -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def config(ticks: int):
    # Small steps and a strict threshold make ticks slow enough to pause and stop in the middle.
    return dataclasses.replace(load_preset("mlp-digits-m2m"), ticks=ticks, checkpoint_every=1000, save_every=1000)


def test_start_progress_pause_resume_stop_resume_from_checkpoint_finish(digits_modes, tmp_path):
    registry = Registry()
    out = tmp_path / "run"
    job = registry.start_search("life", digits_modes[0].path, digits_modes[1].path, config(400), out)
    assert job.kind == "search" and job.live

    until(lambda: registry.get("life").progress.tick >= 10, what="progress")
    job = registry.get("life")
    assert job.status == "running" and job.progress.total == 400 and job.progress.ticks_per_s > 0
    assert job.progress.eta_s > 0

    registry.pause("life")
    until(lambda: registry.get("life").status == "paused", what="paused")
    paused_at = registry.get("life").progress.tick
    assert load_run(out).status == "paused"
    time.sleep(0.5)
    assert registry.get("life").progress.tick == paused_at  # nothing runs while paused

    registry.resume("life")
    until(lambda: registry.get("life").progress.tick >= paused_at + 10, what="ticks after resuming")
    assert load_run(out).status == "running"

    registry.stop("life")
    job = registry.wait("life", 60)
    assert job.status == "stopped" and load_run(out).status == "stopped"
    stopped_at = int(load_run(out).metrics["tick"].iloc[-1])
    assert stopped_at < 400
    with pytest.raises(UserError, match="no running job"):
        registry.pause("life")

    job = registry.start_search("life", None, None, None, out, resume=True)  # from the checkpoint
    job = registry.wait("life", 120)
    assert job.status == "finished", job
    run = load_run(out)
    assert run.status == "finished" and list(run.metrics["tick"]) == list(range(401))
    plain = run_search(*digits_modes, config(400), tmp_path / "plain")
    assert run.metrics["distance"].iloc[-1] == pytest.approx(plain.metrics["distance"].iloc[-1], rel=1e-5)


def test_two_searches_at_once_do_not_interfere_and_a_run_folder_is_not_reused(digits_modes, tmp_path):
    registry = Registry(limit=2)  # both run at once, whatever the core count
    a, b = digits_modes[0].path, digits_modes[1].path
    registry.start_search("one", a, b, config(40), tmp_path / "one")
    registry.start_search("two", b, a, config(40), tmp_path / "two")
    with pytest.raises(UserError, match="already running"):
        registry.start_search("one", a, b, config(40), tmp_path / "other")
    for name in ("one", "two"):
        assert registry.wait(name, 120).status == "finished"
    one, two = load_run(tmp_path / "one"), load_run(tmp_path / "two")
    assert list(one.metrics["tick"]) == list(range(41)) == list(two.metrics["tick"])
    assert one.info["start"]["path"] == str(a) and two.info["start"]["path"] == str(b)
    alone = run_search(a, b, config(40), tmp_path / "alone")
    assert one.metrics["distance"].iloc[-1] == pytest.approx(alone.metrics["distance"].iloc[-1], rel=1e-5)
    with pytest.raises(UserError, match="already exists"):
        registry.start_search("again", a, b, config(40), tmp_path / "one")


def test_pause_and_stop_during_a_long_tick_leave_a_consistent_checkpoint(digits_modes, tmp_path):
    """Ticks of 2,000 SGD steps (about a second each): pause and stop end the tick early (within 64
    steps) and land between ticks, so the checkpoint's tick is the last row written, and the resumed
    run has every tick exactly once."""
    registry = Registry()
    cfg = config(8)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, loss_threshold=0.0, min_iters=2000,
                                                             max_iters=2000))
    out = tmp_path / "long"
    registry.start_search("long", digits_modes[0].path, digits_modes[1].path, cfg, out)
    until(lambda: registry.get("long").progress.tick >= 1, 120, "the first long tick")
    registry.pause("long")
    until(lambda: registry.get("long").status == "paused", 60, "paused")
    checkpoint = json.loads((out / "checkpoint.json").read_text())
    assert checkpoint["tick"] == int(load_run(out).metrics["tick"].iloc[-1])
    registry.resume("long")
    until(lambda: registry.get("long").progress.tick >= checkpoint["tick"] + 1, 120, "a tick after resuming")
    registry.stop("long")
    assert registry.wait("long", 120).status == "stopped"
    checkpoint = json.loads((out / "checkpoint.json").read_text())
    assert checkpoint["tick"] == int(load_run(out).metrics["tick"].iloc[-1]) < 8
    registry.start_search("long", None, None, None, out, resume=True)
    assert registry.wait("long", 300).status == "finished"
    assert list(load_run(out).metrics["tick"]) == list(range(9))


# --- every kind through one registry: training, Clear cache, workspaces -----------------------------------

def modes_page():
    from streamlit.testing.v1 import AppTest
    return AppTest.from_file(str(REPO / "app" / "views" / "modes.py"), default_timeout=60).run()


def test_stop_on_the_modes_page_ends_training_within_the_seed(tmp_path, monkeypatch):
    """Training runs in a child process: Stop ends it in the middle of a seed (an MLP on Fashion-MNIST
    for 20 epochs, stopped after its first), writes nothing for that seed and trains no further seed."""
    import jobs
    monkeypatch.setenv("LLPF_HOME", str(tmp_path))
    monkeypatch.setattr(jobs, "_SERVER", Registry(limit=1))
    at = modes_page()
    at.selectbox(key="train_dataset").select("fashion-mnist")
    at.selectbox(key="train_recipe").select("mlp-digits")  # 20 epochs
    at.selectbox(key="train_device").select("cpu")
    at.text_input(key="train_seeds").input("1, 2")
    at.button[0].click().run()  # the form's Train button
    assert not at.exception and not at.error
    name = jobs.server_registry().jobs()[0].name
    until(lambda: "epoch 1/20" in (jobs.server_registry().get(name).message or ""), 300, "the first epoch")
    at.run()
    at.button(key=f"stop_{name}").click().run()
    assert not at.exception
    job = jobs.server_registry().wait(name, 120)
    assert job.status == "stopped" and "seed 1" in job.message, job
    assert not list((tmp_path / "modes").glob("*.safetensors"))  # seed 1 unfinished, seed 2 never started
    at.run()
    assert any("stopped while training mlp on fashion-mnist, seed 1" in w.value for w in at.warning)


def test_the_registry_outlives_streamlit_clear_cache(digits_modes, tmp_path, monkeypatch):
    """Clear cache (the developer menu's, or a BackMsg.clear_cache from any client) empties Streamlit's
    caches, which is what Streamlit's handler calls; the jobs, the queue and the limit stay."""
    import jobs
    import state
    import streamlit as st
    from streamlit.runtime import caching
    monkeypatch.setattr(jobs, "_SERVER", Registry(limit=1))
    registry = state.registry()  # what every page reaches
    mine = registry.visitor(str(tmp_path))
    a, b = digits_modes[0].path, digits_modes[1].path
    mine.start_search("long", a, b, config(100_000), tmp_path / "long")
    caching.cache_data.clear()
    caching.cache_resource.clear()
    st.cache_resource.clear()
    assert state.registry() is registry and registry.counts() == (1, 0, 1)
    assert mine.start_search("next", a, b, config(10), tmp_path / "next").status == "queued"  # the limit holds
    mine.stop("long")  # still under control
    assert registry.wait("long", 120, owner=mine.owner).status == "stopped"
    assert registry.wait("next", 120, owner=mine.owner).status == "finished"


def test_workspaces_see_and_control_only_their_own_jobs(digits_modes, tmp_path, monkeypatch):
    monkeypatch.setenv("LLPF_VISITOR_MAX_JOBS", "1")
    monkeypatch.setenv("LLPF_VISITOR_MAX_QUEUED", "1")
    registry = Registry(limit=2)
    alice, bob = registry.visitor(str(tmp_path / "alice")), registry.visitor(str(tmp_path / "bob"))
    a, b = digits_modes[0].path, digits_modes[1].path
    alice.start_search("run", a, b, config(100_000), tmp_path / "alice" / "run")
    assert alice.start_search("more", a, b, config(10), tmp_path / "alice" / "more").status == "queued"  # her share
    with pytest.raises(UserError, match="already has 1 job\\(s\\) queued"):
        alice.start_search("most", a, b, config(10), tmp_path / "alice" / "most")
    assert bob.start_search("run", b, a, config(100_000), tmp_path / "bob" / "run").status != "queued"  # same name
    assert [j.name for j in alice.jobs()] == ["run", "more"] and [j.name for j in bob.jobs()] == ["run"]
    assert bob.get("more") is None
    with pytest.raises(UserError, match="no running job 'more'"):
        bob.stop("more")  # not his: nothing happens to alice's queued job
    assert alice.get("more").status == "queued"
    bob.stop("run")
    assert registry.wait("run", 120, owner=bob.owner).status == "stopped"
    assert alice.get("run").status == "running"  # her job of the same name runs on
    alice.stop("more")
    alice.stop("run")
    assert registry.wait("run", 120, owner=alice.owner).status == "stopped"
    assert registry.queue.snapshot() == ([], [])
