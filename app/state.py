"""Shared state of the dashboard: session keys, the workspace, cached readers and the job registry.

Per-session values live in ``st.session_state`` under the keys named here. Loaded modes, shared by
every session, come from ``st.cache_resource`` (read-only; ``run_search`` copies their weights). The
one job registry is not a Streamlit cache, which any visitor can empty: it is ``jobs.server_registry()``,
and a session reaches only its own workspace's jobs through ``visitor()``. Importing this module costs no
torch or pandas (they take seconds on a small machine): they load with the first function that needs
them, so the Home page's text and demo button are on screen before that.
"""
from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import confine
import streamlit as st
from access import ACCESS, COOKIE, token
from streamlit.errors import StreamlitPageNotFoundError

import llpf_core
from llpf_core import UserError, workspace_dir

if TYPE_CHECKING:
    import pandas as pd
    from jobs import Registry, VisitorJobs

    from llpf_core import Mode, Run

WORKSPACE = "workspace"  # the workspace this session chose inside the root ($LLPF_HOME), "" for the root
ACCESS_KEY = "access_granted"  # this session gave the right $LLPF_ACCESS_TOKEN (served without the gate)
OWNER = "browser"  # the llpf_client cookie of the browser this session belongs to (served through the gate)
SELECTED_RUN = "selected_run"  # the run shown by the live view and Explore
# While a search runs, its progress line updates every REFRESH_S and its charts every CHART_REFRESH_S.
# Redrawing the plotly charts is the browser's main cost while watching (0.3 of a core with a redraw
# every 3 s, against 0.1 for the progress line every second), and on a small machine every busy core
# slows the search (bench/dashboard_overhead.py), so charts redraw less often. A young run is the
# exception: in its first YOUNG_RUN_S of search the charts redraw every YOUNG_CHART_REFRESH_S, so the
# first curves appear as soon as the first rows are written and visibly grow (the demo's whole search
# takes a few seconds); to keep that cheap, only the loss and distance charts are drawn meanwhile.
REFRESH_S = 1.0
CHART_REFRESH_S = 5.0
YOUNG_CHART_REFRESH_S = 1.0
YOUNG_RUN_S = 30.0
# What makes Streamlit's markdown more than text: links and images ([...](...), :color[...]), emphasis, code,
# LaTeX, HTML, headings, tables, and bare URLs (autolinked): backslashed, they show as typed.
_MARKDOWN_SPECIAL = re.compile(r"[\\`*_{}\[\]<>#|~$]|(?<=:)//|(?i:(?<=www)\.)")


def chart_refresh_s(metrics: pd.DataFrame | None) -> float:
    """How often a live run's charts redraw, given the metrics written so far (None: no run.json yet)."""
    if metrics is None or not len(metrics) or float(metrics["wall_s"].iloc[-1]) < YOUNG_RUN_S:
        return YOUNG_CHART_REFRESH_S
    return CHART_REFRESH_S


def before_first_torch_import() -> None:
    """Let the server send what the page has drawn so far before torch is first imported.

    The import holds the GIL for long stretches (loading its C++ libraries), during which the server's
    event loop cannot send anything, so without this pause the Home page's text and demo button, drawn
    already, reached the browser only after the import. Only the server's first page run pays it.
    """
    if "torch" not in sys.modules:
        time.sleep(0.2)


def registry() -> Registry:
    """The job registry of this server process, shared by every session and tab (the server's counts)."""
    from jobs import server_registry
    return server_registry()


def workspace() -> Path:
    """This session's workspace inside the root (UserError if it would leave it). Creates nothing: a shared
    ``?workspace=`` link makes no folder by being visited; the first file written there does."""
    choice = st.session_state.get(WORKSPACE)
    if choice is None:
        choice = st.query_params.get("workspace", "")
    return confine.resolve_workspace(workspace_dir(), choice)


def visitor_path(text: str, what: str) -> Path:
    """A path the visitor typed, inside their workspace or a shared folder (confine.visitor_path)."""
    return confine.visitor_path(text, workspace(), what)


def visitor() -> VisitorJobs:
    """The registry as this session may use it: start, see and control its own workspace's jobs only."""
    return registry().visitor(str(workspace().resolve()))


def my_jobs() -> list:
    """This workspace's jobs (other visitors' jobs are not shown)."""
    return visitor().jobs()


def job(name: str):
    """This workspace's job called ``name``, else None."""
    return visitor().get(name)


def browser() -> str | None:
    """This browser's ``llpf_client`` cookie, given by the gate (serve.py); None without the gate."""
    value = st.context.cookies.get(COOKIE)
    return value if isinstance(value, str) and value else None


def claim_session() -> None:
    """Forget this session's state if another browser took it over (a reattach with a leaked session id)."""
    client = browser()
    if st.session_state.get(OWNER, client) != client:
        st.session_state.clear()
    if client is not None:
        st.session_state[OWNER] = client


def access_granted(given: str | None = None) -> bool:
    """No $LLPF_ACCESS_TOKEN, this browser gave it before, or ``given`` is it (access.py: compared in constant
    time, wrong ones limited per address and server-wide and logged).

    Served through the gate (serve.py), the grant belongs to the browser's HttpOnly cookie, which a leaked
    session id does not carry, and a client without the cookie is never let in; without the gate
    (``streamlit run app/Home.py``, one user on their own machine) the grant belongs to the session.
    """
    if not token():
        return True
    client = browser()
    if ACCESS.cookie_required:
        if client is None:
            return False
        if ACCESS.granted(client):
            return True
    else:
        ACCESS.warn_unserved()
        if st.session_state.get(ACCESS_KEY):
            return True
    if given is None or not ACCESS.attempt(given, st.context.ip_address or "localhost", client):
        return False
    if not ACCESS.cookie_required:
        st.session_state[ACCESS_KEY] = True
    return True


def access_wait_s() -> float:
    """Seconds before this client's address may try another token."""
    return ACCESS.wait_s(st.context.ip_address or "localhost")


def modes_dir() -> Path:
    return workspace() / "modes"


def runs_dir() -> Path:
    return workspace() / "runs"


@st.cache_resource(show_spinner=False)
def device_label() -> str:
    import torch
    if torch.cuda.is_available():
        return f"GPU: {torch.cuda.get_device_name(0)}"
    return f"CPU ({os.cpu_count()} cores), no GPU"


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


@st.cache_resource(max_entries=64, show_spinner=False)
def _load_mode(path: str, version: tuple[int, int]) -> Mode:
    return llpf_core.load_mode(path)


def mode(path: Path) -> Mode:
    """A validated mode file, loaded once per version of the file (UserError if it is not one)."""
    return _load_mode(str(path), _stamp(path))


def mode_files() -> list[Path]:
    here = workspace()
    return sorted(p for p in modes_dir().glob("*.safetensors") if confine.inside(p, here))


def modes_table() -> pd.DataFrame:
    """One row per file in modes/: metadata and metrics, or the reason it is not a valid mode."""
    import pandas as pd
    rows = []
    for path in mode_files():
        try:
            meta = mode(path).meta
            rows.append({"file": path.name, "model": meta.model, "dataset": meta.dataset, "seed": meta.seed,
                         **{k: meta.metrics.get(k) for k in ("train_loss", "train_acc", "test_loss", "test_acc")},
                         "recipe": meta.train_config.get("recipe", ""), "created": meta.created, "problem": ""})
        except UserError as e:
            rows.append({"file": path.name, "problem": str(e)})
    columns = ["file", "model", "dataset", "seed", "train_loss", "train_acc", "test_loss", "test_acc", "recipe",
               "created", "problem"]
    return pd.DataFrame(rows, columns=columns)


def run_dirs() -> list[Path]:
    """Run folders in the workspace, newest first."""
    here = workspace()
    found = [p.parent for p in runs_dir().glob("*/run.json") if confine.inside(p, here)]  # no symlinks out
    return sorted(found, key=lambda p: (p / "run.json").stat().st_mtime, reverse=True)


def read_run(path: Path) -> Run | None:
    try:
        return llpf_core.load_run(path)
    except UserError:
        return None


@st.cache_data(max_entries=32, show_spinner=False)
def _table(path: str, name: str, version: tuple[int, int]) -> pd.DataFrame:
    return getattr(llpf_core.load_run(Path(path).parent), name)


def table(run: Run, name: str) -> pd.DataFrame:
    """One of a run's CSV tables (metrics, layers, continuity, baseline), re-read only when it changed."""
    path = run.path / f"{name}.csv"
    if not path.exists():
        return getattr(run, name)
    return _table(str(path), name, _stamp(path))


def select_run(name: str | None) -> None:
    """Remember the run in the session and in the URL, so a refresh or a shared link finds it."""
    st.session_state[SELECTED_RUN] = name
    if name:
        st.query_params["run"] = name
    elif "run" in st.query_params:
        del st.query_params["run"]


def selected_run() -> str | None:
    return st.query_params.get("run") or st.session_state.get(SELECTED_RUN)


def open_run(name: str) -> None:
    """Go to the live view of run ``name``. A page run on its own (not through Home.py's navigation,
    e.g. in AppTest) stays where it is and says where the run is."""
    select_run(name)
    try:
        shared = {"workspace": st.query_params["workspace"]} if "workspace" in st.query_params else {}
        params = {"run": name, **shared}
        st.switch_page("views/runs.py", query_params=params)
    except StreamlitPageNotFoundError:
        st.success(f"Started {plain(name)}: follow it on the Runs page.")


def plain(text: object) -> str:
    """``text`` escaped for Streamlit's markdown (st.caption, st.error, ...), so a visitor's workspace, run,
    mode or dataset name shows as typed and never becomes a link, an image, emphasis, HTML or LaTeX."""
    return _MARKDOWN_SPECIAL.sub(lambda m: "".join("\\" + c for c in m.group()), str(text))


def show_error(e: Exception) -> None:
    st.error(plain(e), icon=":material/error:")


def act(action) -> None:
    """A button's action: done, the page reruns to show what changed; refused (a UserError), its one line
    stays where the user clicked (no rerun, which would wipe it)."""
    try:
        action()
    except UserError as e:
        show_error(e)
    else:
        st.rerun()


@st.fragment(run_every=REFRESH_S)
def _follow_job_live(job_name: str) -> None:
    """The job's progress every REFRESH_S; its end asks for a full rerun, which draws its result."""
    current = job(job_name)
    if current is None or not current.live:
        st.rerun()
    st.progress(current.progress.fraction, text=plain(current.message or current.status))


def follow_job(job_name: str, live: bool, what: str) -> None:
    """A background job's progress while it runs (a fragment), then how it ended if it did not finish."""
    if live:
        _follow_job_live(job_name)
        return
    ended = job(job_name)
    if ended and ended.status == "failed":
        st.error(f"{what} failed: {plain(ended.error)}", icon=":material/error:")
    elif ended and ended.status == "stopped":
        st.caption(f"Stopped: {plain(ended.message)}")

