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
