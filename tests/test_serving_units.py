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


# --- the served instance's pure parts: typed paths, markdown, the token's limits, the gate's rules ---------
def test_typed_paths_stay_in_the_workspace_or_a_shared_folder(tmp_path, monkeypatch):
    ws, shared, outside = tmp_path / "root" / "alice", tmp_path / "shared", tmp_path / "outside"
    for folder in (ws / "data", shared, outside):
        folder.mkdir(parents=True)
    os.symlink(outside, ws / "data" / "escape")
    monkeypatch.setenv("LLPF_SHARED_PATHS", str(shared))
    assert confine.visitor_path("data/imgs", ws, "data path") == (ws / "data" / "imgs").resolve()
    assert confine.visitor_path(str(shared / "cifar"), ws, "data path") == (shared / "cifar").resolve()
    assert confine.visitor_data("data/set.safetensors", ws) == f"tensors:{(ws / 'data' / 'set.safetensors').resolve()}"
    assert confine.visitor_data("folder:data/imgs", ws) == f"folder:{(ws / 'data' / 'imgs').resolve()}"
    assert confine.visitor_dataset("digits", ws) == "digits"
    refusals = set()
    for typed in (str(outside), str(outside / "missing"), "/etc/passwd", "../..", "data/escape", "data/escape/x",
                  "a\0b", "x" * 300, "x/" * 600, ""):
        with pytest.raises(UserError) as e:
            confine.visitor_path(typed, ws, "data path")
        refusals.add(str(e.value).replace(repr(typed.strip()[:80]), "PATH"))
    assert len(refusals) == 1 and "\n" not in refusals.pop()  # one text: nothing said about what exists
    with pytest.raises(UserError, match="not inside your workspace"):
        confine.visitor_dataset(f"folder:{outside}", ws)


@pytest.mark.parametrize("choice", ["a\0b", "x" * 300, "![x](http://h/p.png)", "a\nb", "<b>", "a:b"])
def test_odd_workspace_names_are_one_line_refusals_that_create_nothing(tmp_path, choice):
    with pytest.raises(UserError, match="a workspace is a name or subfolder path") as e:
        confine.resolve_workspace(tmp_path / "root", choice)
    assert "\n" not in str(e.value) and not (tmp_path / "root").exists()


def test_plain_shows_markdown_as_typed():
    import state
    assert state.plain("![x](http://h/p.png)") == "!\\[x\\](http:\\/\\/h/p.png)"
    assert state.plain("__b__ *i* `c` $x$ <b> www.h.org :red[x]") == \
        "\\_\\_b\\_\\_ \\*i\\* \\`c\\` \\$x\\$ \\<b\\> www\\.h.org :red\\[x\\]"
    assert state.plain("workspace 'alice' is outside (see LLPF-HOME)") == "workspace 'alice' is outside (see LLPF-HOME)"


def test_wrong_tokens_are_limited_per_address_and_in_all(monkeypatch):
    from access import Access
    monkeypatch.setenv("LLPF_ACCESS_TOKEN", "right")
    now = [1000.0]
    monkeypatch.setattr("access.time.monotonic", lambda: now[0])
    access = Access(per_address=2, global_limit=3, window_s=60)
    assert not access.granted("cookie-a") and not access.attempt("wrong", "10.0.0.1", "cookie-a")
    assert not access.attempt("wrong", "10.0.0.1", "cookie-b")  # a new session: still the same address
    assert access.wait_s("10.0.0.1") == 60 and access.wait_s("10.0.0.2") == 0
    assert not access.attempt("right", "10.0.0.1", "cookie-c") and not access.granted("cookie-c")  # locked out
    assert not access.attempt("wrong", "10.0.0.2", "cookie-d")  # the third wrong token server-wide
    assert access.wait_s("10.0.0.3") == 60 and not access.attempt("right", "10.0.0.3", "cookie-e")
    now[0] += 61  # the window slides past them
    assert access.attempt("right", "10.0.0.1", "cookie-c") and access.granted("cookie-c")
    assert not access.granted("cookie-a") and not access.granted(None)
    monkeypatch.delenv("LLPF_ACCESS_TOKEN")
    assert access.granted(None)  # no token: every visitor is in


def test_the_gate_refuses_streamlit_endpoints_to_clients_without_the_token(monkeypatch):
    import gate
    from access import ACCESS
    monkeypatch.setenv("LLPF_ACCESS_TOKEN", "right")
    assert ACCESS.attempt("right", "127.0.0.1", "granted-cookie")
    for path in ("", "static/js/main.js", "_stcore/health", "_stcore/host-config", "_stcore/stream"):
        assert gate.refusal(path, None) is None
    for path in ("_stcore/upload_file/sid/fid", "media/abc.png", "component/x/index.html", "_stcore/bidi-components/x"):
        assert gate.refusal(path, None) == 403 and gate.refusal(path, "other") == 403
        assert gate.refusal(path, "granted-cookie") is None
    for path in ("_stcore/metrics", "_stcore/agent/interact", "_stcore/script-health-check"):
        assert gate.refusal(path, "granted-cookie") == 404


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
