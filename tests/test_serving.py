"""Serving to others through the real app (AppTest) and the real registry: the workspace stays inside
LLPF_HOME, the access token gates every page, and jobs beyond LLPF_MAX_JOBS wait in the queue."""
import dataclasses
import os
import sys

import pytest
from streamlit.testing.v1 import AppTest

from llpf_core import load_preset, load_run
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "app"))

from jobs import Registry  # noqa: E402


def home() -> AppTest:
    return AppTest.from_file(str(REPO / "app" / "Home.py"), default_timeout=60)


def files(path):
    return sorted(str(p) for p in path.rglob("*"))


@pytest.mark.parametrize("choice", ["outside", "..", "../outside", "link"])
def test_a_workspace_leaving_the_root_is_refused_and_nothing_is_created(tmp_path, monkeypatch, choice):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    os.symlink(tmp_path, root / "link")
    monkeypatch.setenv("LLPF_HOME", str(root))
    if choice == "outside":
        choice = str(outside)
    at = home().run()
    assert not at.exception and at.button(key="run_demo")  # the root itself by default
    before = files(tmp_path)
    at.text_input(key="workspace").input(choice).run()
    assert not at.exception
    assert "outside the server's workspace root" in at.error[0].value
    assert not at.get("button")  # no page under the refusal, hence no demo button
    assert files(tmp_path) == before and not outside.exists()


def test_a_named_workspace_is_inside_the_root_and_named_on_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LLPF_HOME", str(tmp_path / "root"))
    at = home()
    at.query_params["workspace"] = "alice"
    at.run()
    assert not at.exception and at.text_input(key="workspace").value == "alice"
    assert any("Workspace alice" in c.value for c in at.caption)
    assert not (tmp_path / "root" / "alice").exists()  # a visited link creates nothing; the first file written does


def test_the_access_token_gates_the_app(tmp_path, monkeypatch):
    monkeypatch.setenv("LLPF_HOME", str(tmp_path / "root"))
    monkeypatch.setenv("LLPF_ACCESS_TOKEN", "s3cret-token")
    at = home().run()
    assert not at.exception and not [b for b in at.get("button") if b.key == "run_demo"]
    at.text_input(key="access_token").input("wrong")
    at.button[0].click()
    at.run()
    assert "Wrong access token" in at.error[0].value and not [b for b in at.get("button") if b.key == "run_demo"]
    assert not (tmp_path / "root").exists()  # nothing happens before the token
    at.text_input(key="access_token").input("s3cret-token")
    at.button[0].click()
    at.run()
    assert not at.exception and at.button(key="run_demo") and not at.error
    at.run()  # remembered for the session
    assert at.button(key="run_demo")


def test_a_third_job_waits_queued_and_starts_when_one_finishes(digits_modes, tmp_path):
    registry = Registry(limit=2)
    a, b = digits_modes[0].path, digits_modes[1].path
    long = dataclasses.replace(load_preset("mlp-digits-m2m"), ticks=100_000)
    short = dataclasses.replace(load_preset("mlp-digits-m2m"), ticks=20)
    registry.start_search("one", a, b, long, tmp_path / "one")
    registry.start_search("two", b, a, short, tmp_path / "two")
    third = registry.start_search("three", a, b, short, tmp_path / "three")
    fourth = registry.start_search("four", a, b, short, tmp_path / "four")
    assert third.status == "queued" and "position 1 of 1" in third.message and third.live
    assert "position 1 of 2" in registry.get("three").message
    assert fourth.status == "queued" and "position 2 of 2" in fourth.message
    registry.stop("four")  # cancelled while queued: never starts, writes nothing
    assert registry.get("four").status == "stopped" and not (tmp_path / "four").exists()
    assert registry.wait("two", 120).status == "finished"  # frees a slot: three starts
    assert registry.wait("three", 120).status == "finished"
    assert load_run(tmp_path / "three").status == "finished"
    assert registry.get("one").status == "running"  # the long one held its slot meanwhile
    registry.stop("one")
    assert registry.wait("one", 120).status == "stopped"
    assert registry.queue.snapshot() == ([], [])
