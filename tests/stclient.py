"""A raw Streamlit client for the attack tests: HTTP with its own cookie jar, and the websocket protocol
(Streamlit's own protobufs from streamlit.proto) without a browser, as an attacker's script would speak it.
Every wait is bounded in time."""
from __future__ import annotations

import http.cookiejar
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ClientState_pb2 import ClientState
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.proto.WidgetStates_pb2 import WidgetState, WidgetStates
from websockets.sync.client import connect

from tests.conftest import REPO
from tests.test_e2e_browser import free_port


@dataclass
class Server:
    url: str
    log: Path
    home: Path
    pid: int  # the server process's

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(tmp_path: Path, entry: str = "app/serve.py", **env) -> tuple[Server, subprocess.Popen]:
    """``streamlit run ENTRY`` on a free loopback port, once it answers /_stcore/health."""
    port, home = free_port(), tmp_path / "root"
    log = tmp_path / "streamlit.log"
    full = {**os.environ, "LLPF_HOME": str(home), "LLPF_DEMO_SET": "ticks=100000", "OMP_NUM_THREADS": "1", **env}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", entry, "--server.port", str(port),
                                 "--server.address", "127.0.0.1", "--server.headless", "true"], cwd=REPO, env=full,
                                stdout=out, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", log, home, proc.pid)
    deadline = time.monotonic() + 120
    while True:
        try:
            if urllib.request.urlopen(f"{server.url}/_stcore/health", timeout=2).read() == b"ok":
                return server, proc
        except OSError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, server.log_text()
        time.sleep(0.5)


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (a sweep the server started runs in a session of its own)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def stop_server(proc: subprocess.Popen) -> None:
    """Stop the server and whatever it started (searches, sweeps), by their ids."""
    for child in children(proc.pid):
        try:
            os.kill(child, signal.SIGTERM)
        except ProcessLookupError:
            pass
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(30)


@dataclass
class Page:
    """What one script run sent: its elements by type, in order."""
    elements: list = field(default_factory=list)
    session_id: str | None = None
    toolbar_mode: int | None = None

    def of(self, kind: str) -> list:
        return [getattr(e, kind) for e in self.elements if e.WhichOneof("type") == kind]

    def widget(self, kind: str, label: str):
        return next(w for w in self.of(kind) if w.label == label)

    def keyed(self, kind: str, key: str):
        """The widget made with ``key=KEY`` (Streamlit's widget ids end with the user's key)."""
        return next(w for w in self.of(kind) if w.id.endswith(f"-{key}"))

    def has_widget(self, kind: str, label: str) -> bool:
        return any(w.label == label for w in self.of(kind))

    def alerts(self) -> list[str]:
        return [a.body for a in self.of("alert")]

    def texts(self) -> list[str]:
        return [m.body for m in self.of("markdown")] + self.alerts()


class Client:
    """One browser-less visitor: its own cookies (from GET /) and one websocket session."""

    def __init__(self, url: str, *, cookies: bool = True, reattach: str | None = None):
        self.url, self.jar = url, http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        if cookies:  # the page and the health check: the gate's and Streamlit's XSRF cookie, as a browser gets them
            for path in ("/", "/_stcore/health"):
                self.opener.open(f"{url}{path}", timeout=30).read()
        # The browser's reconnect: "streamlit, <xsrf token>, <session id>" (an attacker has no xsrf token)
        protocols = ["streamlit", "none", reattach] if reattach else ["streamlit"]
        header = "; ".join(f"{c.name}={c.value}" for c in self.jar)
        self.ws = connect(url.replace("http", "ws", 1) + "/_stcore/stream", open_timeout=30, close_timeout=5,
                          subprotocols=protocols,
                          additional_headers={"Cookie": header} if header else None, max_size=None,
                          legacy=True)  # a plain connection object, closed by close()
        self.widgets: dict[str, WidgetState] = {}
        self.session_id: str | None = None

    def cookie(self, name: str) -> str | None:
        return next((c.value for c in self.jar if c.name == name), None)

    def close(self) -> None:
        self.ws.close()

    def send(self, **back) -> None:
        self.ws.send(BackMsg(**back).SerializeToString())

    def run(self, query: str = "", page: str = "", timeout: float = 120, **values) -> Page:
        """Rerun the script with the widget values given so far plus ``values`` ({widget id: value}: a str,
        an int (a number input), True for a button's click, or a whole WidgetState) on ``page`` (its URL path,
        e.g. "modes"; "" for Home), and collect what it draws until it finishes."""
        states = dict(self.widgets)
        for wid, value in values.items():
            states[wid] = (value if isinstance(value, WidgetState) else WidgetState(id=wid, trigger_value=True)
                           if value is True else WidgetState(id=wid, int_value=value) if isinstance(value, int)
                           else WidgetState(id=wid, string_value=value))
        self.widgets = {k: v for k, v in states.items() if not v.HasField("trigger_value")}
        self.send(rerun_script=ClientState(query_string=query, page_name=page,
                                           widget_states=WidgetStates(widgets=states.values())))
        return self.receive(timeout)

    def receive(self, timeout: float = 120) -> Page:
        page, deadline = Page(session_id=self.session_id), time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            drawn = [e.WhichOneof("type") for e in page.elements]
            assert left > 0, f"no script_finished within {timeout} s; got {drawn}"
            msg = ForwardMsg()
            msg.ParseFromString(self.ws.recv(timeout=left))
            kind = msg.WhichOneof("type")
            if kind == "new_session":
                self.session_id = page.session_id = msg.new_session.initialize.session_id
                page.toolbar_mode = msg.new_session.config.toolbar_mode
                page.elements.clear()  # a (re)run starts a fresh page
            elif kind == "delta" and msg.delta.WhichOneof("type") == "new_element":
                page.elements.append(msg.delta.new_element)
            elif kind == "script_finished" and msg.script_finished != ForwardMsg.FINISHED_EARLY_FOR_RERUN:
                return page

    def upload(self, session_id: str, file_id: str, data: bytes, name: str = "x.safetensors") -> int:
        """PUT a file into a session's uploads, as the file uploader does (multipart, XSRF header)."""
        boundary = "llpfattack"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
        return self.http(f"/_stcore/upload_file/{session_id}/{file_id}", "PUT", body,
                         {"Content-Type": f"multipart/form-data; boundary={boundary}",
                          "X-Xsrftoken": self.cookie("_streamlit_xsrf") or ""})

    def http(self, path: str, method: str = "GET", data: bytes | None = None, headers: dict | None = None) -> int:
        """The status of one HTTP request with this client's cookies."""
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method, headers=headers or {})
        try:
            with self.opener.open(request, timeout=30) as response:
                return response.status
        except urllib.error.HTTPError as e:
            return e.code


def authenticate(client: Client, token: str, query: str = "") -> Page:
    """Give the token through the prompt's form, as a browser would (on the page at ``?query``); returns the
    page after it."""
    prompt = client.run(query=query)
    field_id = prompt.widget("text_input", "Access token").id
    submit = next(b for b in prompt.of("button") if b.is_form_submitter).id
    return client.run(query=query, **{field_id: token, submit: True})
