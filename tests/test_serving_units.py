"""Serving's pure parts, without Streamlit: the workspace confinement and the job queue."""
import os
import sys
import threading

import pytest

from llpf_core import UserError
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "app"))

import confine  # noqa: E402
from jobs.jobqueue import JobQueue  # noqa: E402
from jobs import limits  # noqa: E402
from jobs.limits import max_jobs  # noqa: E402


def test_a_workspace_is_a_name_or_subfolder_inside_the_root(tmp_path):
    root = tmp_path / "root"
    assert confine.resolve_workspace(root, "") == root  # the single user's default: the root itself
    assert confine.resolve_workspace(root, " alice ") == root / "alice"
    assert confine.resolve_workspace(root, "class/bob") == root / "class" / "bob"
    assert confine.resolve_workspace(root, str(root / "carol")) == root / "carol"  # absolute, but inside
    assert confine.resolve_workspace(root, "a/../b") == root / "a/../b"
    assert not root.exists()  # resolving creates nothing
    confine.create_workspace(root / "alice")
    assert sorted(p.name for p in (root / "alice").iterdir()) == ["data", "modes", "runs"]


@pytest.mark.parametrize("choice", ["..", "../elsewhere", "a/../../elsewhere", "/tmp/llpf-elsewhere", "link",
                                    "link/sub"])
def test_outside_dotdot_and_symlinks_leaving_the_root_are_refused(tmp_path, choice):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    os.symlink(outside, root / "link")
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(UserError) as e:
        confine.resolve_workspace(root, choice)
    assert "outside the server's workspace root" in str(e.value) and "LLPF_HOME" in str(e.value)
    assert "\n" not in str(e.value)
    assert sorted(tmp_path.rglob("*")) == before and not os.path.exists("/tmp/llpf-elsewhere")


def test_inside_follows_symlinks(tmp_path):
    (tmp_path / "root" / "runs").mkdir(parents=True)
    os.symlink(tmp_path, tmp_path / "root" / "runs" / "escape")
    assert confine.inside(tmp_path / "root" / "runs", tmp_path / "root")
    assert not confine.inside(tmp_path / "root" / "runs" / "escape", tmp_path / "root")


@pytest.mark.parametrize("name", ["", "a/b", "..", ".hidden", "a\\b", "../x"])
def test_run_names_are_plain_folder_names(name):
    with pytest.raises(UserError, match="plain folder name"):
        confine.plain_name(name)
    assert confine.plain_name("demo-1") == "demo-1"


def test_max_jobs_defaults_and_refuses_nonsense():
    assert max_jobs({}, cpu_count=16) == 15
    assert max_jobs({}, cpu_count=2) == 1 and max_jobs({}, cpu_count=1) == 1
    assert max_jobs({}, cpu_count=16, gpus=2) == 2  # one search per GPU
    assert max_jobs({"LLPF_MAX_JOBS": "3"}, cpu_count=16, gpus=2) == 3  # told otherwise
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(UserError, match="LLPF_MAX_JOBS must be a whole number"):
            max_jobs({"LLPF_MAX_JOBS": bad})


def test_queue_starts_in_order_when_slots_free_and_cancels():
    started = []
    q = JobQueue(2)
    for name in "abcde":
        q.submit(name, lambda n=name: started.append(n))
    assert started == ["a", "b"] and q.snapshot() == (["a", "b"], ["c", "d", "e"])
    assert q.position("c") == 1 and q.position("e") == 3 and q.position("a") is None
    assert q.cancel("d") and not q.cancel("d") and not q.cancel("a")
    q.done("b")
    assert started == ["a", "b", "c"] and q.position("e") == 1
    q.done("a")
    q.done("c")
    assert started == ["a", "b", "c", "e"] and q.snapshot() == (["e"], [])
    q.done("e")
    assert q.submit("f", lambda: started.append("f")) and q.snapshot() == (["f"], [])


def test_queue_never_runs_more_than_its_limit_from_many_threads():
    q, lock, running, peak = JobQueue(3), threading.Lock(), [0], [0]
    finished = threading.Semaphore(0)

    def job(name):
        def start():
            def body():
                with lock:
                    running[0] += 1
                    peak[0] = max(peak[0], running[0])
                with lock:
                    running[0] -= 1
                q.done(name)
                finished.release()
            threading.Thread(target=body).start()
        return start

    submitters = [threading.Thread(target=q.submit, args=(f"j{i}", job(f"j{i}"))) for i in range(40)]
    for t in submitters:
        t.start()
    for t in submitters:
        t.join()
    for _ in range(40):
        assert finished.acquire(timeout=60)
    assert peak[0] <= 3 and q.snapshot() == ([], [])


def test_each_workspace_has_its_own_running_and_queued_limits():
    started = []
    q = JobQueue(2, owner_running=1, owner_queued=2)
    for key in ("a1", "a2", "a3"):
        q.submit(key, lambda k=key: started.append(k), owner="alice")
    with pytest.raises(UserError, match="already has 2 job\\(s\\) queued") as e:
        q.submit("a4", lambda: started.append("a4"), owner="alice")
    assert "\n" not in str(e.value)
    assert started == ["a1"]  # a free slot, but alice may run one job at a time
    assert q.submit("b1", lambda: started.append("b1"), owner="bob")  # the second slot goes to bob at once
    assert q.snapshot() == (["a1", "b1"], ["a2", "a3"])
    q.done("a1")
    assert started == ["a1", "b1", "a2"]


def test_a_free_slot_goes_to_the_workspace_with_fewest_jobs_running():
    """One visitor's four demos do not put another's at #4: bob's first job waits behind none of alice's."""
    started = []
    q = JobQueue(1)
    for key in ("a1", "a2", "a3", "a4"):
        q.submit(key, lambda k=key: started.append(k), owner="alice")
    q.submit("b1", lambda: started.append("b1"), owner="bob")
    q.submit("b2", lambda: started.append("b2"), owner="bob")
    assert started == ["a1"] and q.position("b1") == 1 and q.order() == ["b1", "a2", "b2", "a3", "a4"]
    for key in ("a1", "b1", "a2", "b2", "a3"):
        q.done(key)
    assert started == ["a1", "b1", "a2", "b2", "a3", "a4"]


def test_the_limits_come_from_the_environment_and_refuse_nonsense():
    assert limits.visitor_max_jobs(4, {}) == 4 and limits.visitor_max_jobs(4, {"LLPF_VISITOR_MAX_JOBS": "2"}) == 2
    assert limits.visitor_max_jobs(1, {"LLPF_VISITOR_MAX_JOBS": "3"}) == 1  # never more than the server's
    assert limits.visitor_max_queued({}) == limits.DEFAULT_VISITOR_QUEUED
    assert limits.sweep_max_workers({}, cpu_count=16) == 16 and limits.sweep_max_pairs({}) == limits.DEFAULT_SWEEP_PAIRS
    assert limits.sweep_max_pairs({"LLPF_SWEEP_MAX_PAIRS": "5"}) == 5
    for name, read in (("LLPF_VISITOR_MAX_QUEUED", limits.visitor_max_queued),
                       ("LLPF_SWEEP_MAX_PAIRS", limits.sweep_max_pairs)):
        with pytest.raises(UserError, match=f"{name} must be a whole number of at least 1"):
            read({name: "0"})
