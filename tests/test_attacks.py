"""The security probe of issue 28, replayed as attacks on a real served instance (``streamlit run
app/serve.py`` on loopback, a token set): a raw websocket client speaking Streamlit's protobufs
(tests/stclient.py) and, where only a browser shows it, Debian's chromium. One test per finding; each
attack got through on the unhardened server (``streamlit run app/Home.py``) and must fail here.
docs/threat-model.md says what each defence is."""
import http.server
import json
import re
import stat
import sys
import threading
import time
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright
from safetensors import safe_open
from safetensors.torch import save_file
from streamlit.proto.Common_pb2 import FileUploaderState, UploadedFileInfo
from streamlit.proto.WidgetStates_pb2 import WidgetState

from llpf_core import UserError
from tests.conftest import REPO
from tests.stclient import Client, Page, authenticate, children, start_server, stop_server
from tests.test_e2e_browser import CHROMIUM, free_port

sys.path.insert(0, str(REPO / "app"))

TOKEN = "class-token-7"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One served instance for the attacks that leave no lasting state behind (no jobs, no lockout)."""
    tmp = tmp_path_factory.mktemp("served")
    (tmp / "outside").mkdir()
    server, proc = start_server(tmp, LLPF_ACCESS_TOKEN=TOKEN, LLPF_MAX_JOBS="1")
    yield server
    stop_server(proc)


@pytest.fixture
def visitor(served):
    """A visitor who gave the token, in the workspace "alice"."""
    client = Client(served.url)
    assert authenticate(client, TOKEN, "workspace=alice").has_widget("button", "Run the demo")
    yield client
    client.close()


def files(path):
    return sorted(str(p) for p in path.rglob("*")) if path.exists() else []


def submit(client: Client, page: str, button: str, fields: dict[str, str]):
    """Fill a form's text fields (by label, or by key as "key=...") and press its button, as a browser would."""
    shown = client.run(page=page, query="workspace=alice")
    values = {(shown.keyed("text_input", name[4:]) if name.startswith("key=") else shown.widget("text_input", name)).id:
              value for name, value in fields.items()}
    values[next(b for b in shown.of("button") if b.label == button).id] = True
    return client.run(page=page, query="workspace=alice", **values)


def one_refusal(page) -> str:
    errors = [a for a in page.alerts() if "not inside your workspace" in a]
    assert len(errors) == 1 and "\n" not in errors[0] and not page.of("exception"), page.alerts()
    return errors[0]


def open_page(page, url: str) -> None:
    """Go to ``url`` in the browser; give the token if the page asks for it (each page load is a session)."""
    page.goto(url)
    prompt, sidebar = page.get_by_label("Access token"), page.get_by_test_id("stSidebar")
    prompt.or_(sidebar).first.wait_for(timeout=120_000)
    if prompt.count():
        prompt.fill(TOKEN)
        page.get_by_role("button", name="Enter").click()
    sidebar.wait_for(timeout=120_000)


# --- finding 1: anyone can wipe the job registry without the token ------------------------------------------
def test_1_clear_cache_from_a_client_without_the_token_leaves_jobs_and_the_limit_alone(tmp_path):
    server, proc = start_server(tmp_path, LLPF_ACCESS_TOKEN=TOKEN, LLPF_MAX_JOBS="1")
    try:
        alice, bob = Client(server.url), Client(server.url)
        authenticate(alice, TOKEN, "workspace=alice")
        authenticate(bob, TOKEN, "workspace=bob")
        home = alice.run(query="workspace=alice")
        alice.run(query="workspace=alice", **{home.widget("button", "Run the demo").id: True})
        deadline = time.monotonic() + 300  # the demo trains its two modes, then searches (ticks=100000)
        while not any("1 running of 1 slot(s)" in t for t in alice.run(query="workspace=alice").texts()):
            assert time.monotonic() < deadline, "the demo never took the slot"
            time.sleep(1)
        attacker = Client(server.url)  # never gives the token
        attacker.run()
        attacker.send(clear_cache=True)
        attacker.run()  # the message was handled (or dropped) before this rerun's answer
        assert any("1 running of 1 slot(s)" in t for t in alice.run(query="workspace=alice").texts())
        home = bob.run(query="workspace=bob")
        bob.run(query="workspace=bob", **{home.widget("button", "Run the demo").id: True})
        texts = bob.run(query="workspace=bob").texts()
        assert any("1 running of 1 slot(s), 1 queued" in t for t in texts), texts  # bob waits: the limit held
        # finding 11, file modes: what the served process and its jobs write is private (umask 077)
        deadline = time.monotonic() + 300
        while not list((server.home / "alice" / "modes").glob("*.safetensors")):  # the demo's first mode
            assert time.monotonic() < deadline, "the demo wrote no mode"
            time.sleep(1)
        written = list(server.home.rglob("*"))
        assert written and all(stat.S_IMODE(p.stat().st_mode) & 0o077 == 0 for p in written), \
            {str(p): oct(p.stat().st_mode) for p in written}
    finally:
        stop_server(proc)


# --- finding 2: writes outside $LLPF_HOME ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../../../outside/evil", "{outside}/abs"])
def test_2_a_sweep_name_cannot_write_outside_the_root(served, visitor, name):
    outside = served.home.parent / "outside"
    before = files(served.home.parent)
    page = submit(visitor, "sweeps", "Start sweep", {"Name": name.format(outside=outside)})
    assert any("sweep name must be a plain folder name" in a for a in page.alerts()), page.alerts()
    assert files(served.home.parent) == before


def test_2_training_data_outside_the_workspace_writes_nothing_there(served, visitor):
    outside = served.home.parent / "outside"
    (outside / "imgs").mkdir(exist_ok=True)
    before = files(served.home.parent)
    page = submit(visitor, "modes", "Train", {"key=train_own_data": "/../../../../../" + str(outside / "imgs")})
    one_refusal(page)
    assert files(served.home.parent) == before


# --- finding 3: reads outside the root, and error texts that probe the file system ---------------------------
def test_3_import_paths_outside_the_workspace_are_refused_alike_whether_or_not_they_exist(served, visitor,
                                                                                          digits_modes):
    outside = served.home.parent / "outside"
    real = outside / "state.safetensors"
    with safe_open(digits_modes[0].path, "pt") as f:
        save_file({k: f.get_tensor(k) for k in f.keys()}, real)
    refusals = []
    for path in (real, outside / "missing.safetensors", outside, "/etc/passwd", "../../outside/state.safetensors"):
        page = submit(visitor, "modes", "Import", {"key=import_path": str(path)})
        refusals.append(one_refusal(page).replace(repr(str(path)), "PATH"))
    assert len(set(refusals)) == 1, refusals  # nothing tells what exists out there
    assert not list(served.home.rglob("*.safetensors"))


def test_3_sweep_datasets_and_presets_take_no_server_paths(served, visitor):
    """The Sweeps page offers the engine's datasets and presets as lists: no field takes a path. A client
    that sends a path anyway, past the page, is refused by the registry in one line and nothing is written."""
    page = visitor.run(page="sweeps", query="workspace=alice")
    assert page.has_widget("selectbox", "Dataset") and page.has_widget("selectbox", "Preset")
    assert [w.label for w in page.of("text_input")] == ["Workspace", "Name"]  # the sidebar's, and the sweep's name
    from jobs import Registry
    outside = served.home.parent / "outside"
    (outside / "p.json").write_text("{}")
    before = files(served.home.parent)
    for fields in ({"dataset": f"folder:{outside}"}, {"dataset": "tensors:/etc/passwd"},
                   {"preset": str(outside / "p.json")}):
        with pytest.raises(UserError) as refused:
            Registry(limit=1).start_sweep(served.home / "alice" / "sweeps", "evil", model="mlp",
                                          **{"dataset": "digits", "pairs": 1, **fields})
        assert "\n" not in str(refused.value)
    assert files(served.home.parent) == before


# --- finding 4: memory filled without the token ---------------------------------------------------------------
def test_4_uploads_are_refused_until_the_token_is_given(served):
    stranger = Client(served.url)
    stranger.run()  # a session of its own, with the XSRF cookie and header a browser would send
    # 32 KB: the whole body fits the socket's buffers, so the client always reads the answer (with 1 MB the
    # server's 403 and close could come first, and the client's write broke on the closed connection).
    assert stranger.upload(stranger.session_id, "f1", b"\0" * 32_000) == 403
    authenticate(stranger, TOKEN)
    assert stranger.upload(stranger.session_id, "f2", b"\0" * 1000) == 204  # the same client, after the token


# --- finding 5: a 36 KB upload makes the server allocate gigabytes -------------------------------------------
def rss_kb(pid: int) -> int:
    """The resident memory of ``pid`` and its children, in kB (0 for a process that has ended)."""
    total = 0
    for p in (pid, *children(pid)):
        try:
            total += int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{p}/status").read_text()).group(1))
        except (OSError, AttributeError):  # ended meanwhile, or a zombie without VmRSS
            continue
    return total


def upload_through_the_uploader(client: Client, path: Path) -> Page:
    """Send ``path`` through the Modes page's "Upload modes" widget, as the browser's uploader does: PUT the
    bytes into this session's uploads, then rerun with the widget naming the file."""
    page = client.run(page="modes", query="workspace=alice")
    uploader = next(w.id for w in page.of("file_uploader") if w.label.startswith("Mode files"))
    data = path.read_bytes()
    file_id = f"attack-{path.stem}"
    assert client.upload(client.session_id, file_id, data, name=path.name) == 204
    info = UploadedFileInfo(file_id=file_id, name=path.name, size=len(data))
    state = WidgetState(id=uploader, file_uploader_state_value=FileUploaderState(uploaded_file_info=[info]))
    return client.run(page="modes", query="workspace=alice", **{uploader: state})


def test_5_a_small_mode_file_asking_for_a_huge_model_is_one_line_and_allocates_nothing(served, visitor,
                                                                                      digits_modes, tmp_path):
    with safe_open(digits_modes[0].path, "pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    crafted = {"wide": {"llpf.model_kwargs": json.dumps({"hidden": [20000, 20000]})},
               "huge": {"llpf.model_kwargs": json.dumps({"hidden": [100000, 100000]})},
               "plugin": {"llpf.model": "mymlp", "llpf.plugin": "{not json"}}  # a plugin model, unreadable
    pid = served.pid
    visitor.run(page="modes", query="workspace=alice")  # the page's own imports happen before the baseline
    before = rss_kb(pid)
    for name, bad in crafted.items():
        path = tmp_path / f"{name}.safetensors"
        save_file(tensors, path, metadata={**meta, **bad})
        assert path.stat().st_size < 64_000  # the 36 KB file: a small MLP's tensors
        page = upload_through_the_uploader(visitor, path)
        errors = [a for a in page.alerts() if path.name in a]
        assert len(errors) == 1 and "\n" not in errors[0] and not page.of("exception"), page.alerts()
        assert not errors[0].startswith("added"), errors  # refused, not added
        assert not page.has_widget("text_input", "Access token")  # the server is still there, same session
        grown = rss_kb(pid) - before
        assert grown < 300_000, f"{path.name} grew the server by {grown // 1000} MB"  # the issue saw 2.1 GB
    modes = served.home / "alice" / "modes"
    assert not (list(modes.iterdir()) if modes.exists() else [])  # no mode kept, no temp file left


# --- finding 6: sweeps outside the limit and across workspaces -----------------------------------------------
def descendants(pid: int) -> list[int]:
    found = children(pid)
    return found + [d for c in found for d in descendants(c)]


def sweep_processes(pid: int) -> dict[int, list[str]]:
    """The `sweep` commands the server ``pid`` started: their ids and command lines."""
    found = {}
    for p in descendants(pid):
        try:
            argv = Path(f"/proc/{p}/cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if "llpf_core" in argv and "sweep" in argv:
            found[p] = argv
    return found


def test_6_a_page_sweep_is_capped_counted_in_the_limit_and_private_to_its_workspace(tmp_path):
    server, proc = start_server(tmp_path, LLPF_ACCESS_TOKEN=TOKEN, LLPF_MAX_JOBS="1",
                                LLPF_SWEEP_MAX_PAIRS="3", LLPF_SWEEP_MAX_WORKERS="1")
    try:
        alice, bob = Client(server.url), Client(server.url)
        authenticate(alice, TOKEN, "workspace=alice")
        authenticate(bob, TOKEN, "workspace=bob")
        page = alice.run(page="sweeps", query="workspace=alice")
        pairs, workers = page.widget("number_input", "Pairs"), page.widget("number_input", "Workers")
        assert (pairs.max, workers.max) == (3, 1)  # the page offers no more than the caps
        values = {page.widget("text_input", "Name").id: "alice-sweep", pairs.id: 500, workers.id: 256,
                  page.widget("button", "Start sweep").id: True}  # past the page: the 500 pairs, 256 workers
        alice.run(page="sweeps", query="workspace=alice", **values)
        deadline = time.monotonic() + 120
        while not (started := sweep_processes(proc.pid)):
            assert time.monotonic() < deadline, "no sweep started"
            time.sleep(0.5)
        sweep_pid, argv = next(iter(started.items()))
        assert int(argv[argv.index("--pairs") + 1]) <= 3 and int(argv[argv.index("--workers") + 1]) <= 1, argv
        for client, who in ((alice, "alice"), (bob, "bob")):  # counted against LLPF_MAX_JOBS, for everyone
            texts = client.run(query=f"workspace={who}").texts()  # the sidebar, under Home
            assert any("1 running of 1 slot(s), 0 queued" in t for t in texts), texts
        page = bob.run(page="sweeps", query="workspace=bob")
        listed = [o for s in page.of("selectbox") if s.label == "Sweep" for o in s.options]
        assert "alice-sweep" not in listed and not page.has_widget("button", "Stop"), (listed, page.alerts())
        home = bob.run(query="workspace=bob")
        bob.run(query="workspace=bob", **{home.widget("button", "Run the demo").id: True})
        texts = bob.run(query="workspace=bob").texts()
        assert any("1 running of 1 slot(s), 1 queued" in t for t in texts), texts  # behind, not beside it
        assert sweep_processes(proc.pid)  # still alice's sweep that holds the slot
        page = alice.run(page="sweeps", query="workspace=alice")  # alice, by contrast, sees it and can stop it
        assert "alice-sweep" in next(s.options for s in page.of("selectbox") if s.label == "Sweep")
        alice.run(page="sweeps", query="workspace=alice", **{page.widget("button", "Stop").id: True})
        deadline = time.monotonic() + 180
        while sweep_processes(proc.pid):
            assert time.monotonic() < deadline, "Stop left the sweep running"
            time.sleep(0.5)
        while not any(t.startswith("stopped") for t in alice.run(page="sweeps", query="workspace=alice").texts()):
            assert time.monotonic() < deadline, "the sweep ended, but not by Stop"  # the job notes its end just after
            time.sleep(0.5)
    finally:
        stop_server(proc)
    assert not Path(f"/proc/{sweep_pid}").exists()  # nothing left behind


# --- finding 7: token guessing across sessions ---------------------------------------------------------------
def test_7_wrong_tokens_are_limited_across_sessions_and_logged_without_the_secret(tmp_path):
    server, proc = start_server(tmp_path, LLPF_ACCESS_TOKEN=TOKEN)
    try:
        guesses = [f"guess-{i}-xyzzy" for i in range(6)]
        for guess in guesses:  # a fresh session (and cookie) for each guess, as a script would
            client = Client(server.url)
            page = authenticate(client, guess)
            assert not page.has_widget("button", "Run the demo")
            client.close()
        assert any("Too many wrong tokens" in a for a in page.alerts()), page.alerts()
        late = Client(server.url)
        page = authenticate(late, TOKEN)  # even the right token waits out the window from this address
        assert not page.has_widget("button", "Run the demo")
        assert any("Too many wrong tokens" in a for a in page.alerts())
        log = server.log_text()
        assert len(re.findall(r"wrong access token from \S+", log)) >= 5
        assert not any(g in log for g in guesses) and TOKEN not in log
    finally:
        stop_server(proc)


# --- finding 8: a leaked session id gets past the token -------------------------------------------------------
def test_8_reattaching_to_an_authenticated_session_by_its_id_shows_only_the_prompt(served):
    victim = Client(served.url)
    assert authenticate(victim, TOKEN).has_widget("button", "Run the demo")
    victim.run(query="workspace=victim")
    bare = Client(served.url, cookies=False, reattach=victim.session_id)  # no cookie at all
    assert not bare.run().has_widget("button", "Run the demo")
    attacker = Client(served.url, reattach=victim.session_id)  # its own cookies, the victim's session id
    page = attacker.run()
    assert attacker.session_id == victim.session_id  # Streamlit did hand the session over
    assert page.has_widget("text_input", "Access token") and not page.has_widget("button", "Run the demo")
    assert attacker.upload(victim.session_id, "f", b"x") == 403


# --- finding 9: tracebacks shown to visitors ------------------------------------------------------------------
@pytest.mark.parametrize("choice", ["a\0b", "x" * 300, "a/" * 100])
def test_9_odd_workspace_names_are_one_line_errors(served, visitor, choice):
    before = files(served.home)
    page = visitor.run(query="workspace=alice")
    field = page.widget("text_input", "Workspace").id
    page = visitor.run(**{field: choice})
    errors = [a for a in page.alerts() if "workspace" in a]
    assert len(errors) == 1 and "\n" not in errors[0] and not page.of("exception"), page.alerts()
    assert files(served.home) == before


def test_9_a_bad_upload_is_one_line_and_the_next_file_is_still_added(served, digits_modes, tmp_path):
    bad = tmp_path / "bad.safetensors"
    with safe_open(digits_modes[0].path, "pt") as f:
        meta = {**f.metadata(), "llpf.model_kwargs": json.dumps({"hidden": [-5]})}
        save_file({k: f.get_tensor(k) for k in f.keys()}, bad, metadata=meta)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        page = browser.new_page()
        open_page(page, f"{served.url}/?workspace=uploader")
        page.get_by_role("link", name="Modes").click()
        page.get_by_text("Upload modes").wait_for(timeout=120_000)
        page.get_by_test_id("stFileUploaderDropzoneInput").first.set_input_files([str(bad), str(digits_modes[1].path)])
        page.get_by_text(f"added {digits_modes[1].path.name}", exact=False).wait_for(timeout=120_000)
        alerts = page.get_by_test_id("stAlertContainer").get_by_test_id("stMarkdownContainer").all_inner_texts()
        errors = [t.strip() for t in alerts if "bad" in t]
        assert len(errors) == 1 and "\n" not in errors[0], errors
        assert page.get_by_test_id("stException").count() == 0
        browser.close()
    assert [p.name for p in (served.home / "uploader" / "modes").iterdir()] == [digits_modes[1].path.name]


# --- finding 10: markdown injection through a shared ?workspace= link ----------------------------------------
def test_10_a_workspace_link_renders_no_markdown_fetches_nothing_and_creates_nothing(served):
    hits = []

    class Listener(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    port = free_port()
    listener = http.server.HTTPServer(("127.0.0.1", port), Listener)
    threading.Thread(target=listener.serve_forever, daemon=True).start()
    before = files(served.home)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM)
            page = browser.new_page()
            for name in (f"![x](http://127.0.0.1:{port}/pixel.png)", "__bold__ _it_"):
                open_page(page, f"{served.url}/?workspace={name}")
                page.get_by_text("Workspace", exact=False).last.wait_for(timeout=60_000)
                time.sleep(2)  # let the page settle; nothing below depends on how long it took
                body = page.get_by_test_id("stApp").inner_html()
                assert f"127.0.0.1:{port}" not in "".join(re.findall(r'<(?:img|a)\b[^>]*>', body))
                assert "<strong>bold</strong>" not in body and "<em>it</em>" not in body
            page.get_by_text("Workspace __bold__ _it_", exact=False).wait_for(timeout=60_000)  # shown as typed
            browser.close()
    finally:
        listener.shutdown()
    assert hits == []
    assert files(served.home) == before  # visiting links made no folders


# --- finding 11: metrics, the developer menu ------------------------------------------------------------------
def test_11_metrics_are_closed_and_the_developer_menu_is_off(served):
    stranger = Client(served.url)
    assert stranger.http("/_stcore/metrics") == 404
    assert stranger.http("/_stcore/health") == 200
    page = stranger.run()
    assert page.toolbar_mode == 2  # Config.ToolbarMode.VIEWER: no Clear cache, Rerun or Settings menu
    authenticate(stranger, TOKEN)
    assert stranger.http("/_stcore/metrics") == 404  # not even with the token


def test_served_pages_answer_only_the_token_prompt_to_a_stranger(served):
    stranger = Client(served.url)
    page = stranger.run(page="modes", query="workspace=alice")
    assert page.has_widget("text_input", "Access token") and not page.has_widget("button", "Train")
    assert stranger.http("/_stcore/agent/openapi.json") == 404
