"""Shared state of the dashboard: session keys, the workspace, cached readers and the job registry.

Per-session values live in ``st.session_state`` under the keys named here. Objects shared by every
session come from ``st.cache_resource``: the one job registry (mutable, guarded by its own lock) and
loaded modes (read-only; ``run_search`` copies their weights). Importing this module costs no torch or
pandas (they take seconds on a small machine): they load with the first function that needs them, so
the Home page's text and demo button are on screen before that.
"""
from __future__ import annotations

import hmac
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import confine
import streamlit as st
from streamlit.errors import StreamlitPageNotFoundError

import llpf_core
from llpf_core import UserError, workspace_dir

if TYPE_CHECKING:
    import pandas as pd
    from runner import Registry

    from llpf_core import Mode, Run

WORKSPACE = "workspace"  # the workspace this session chose inside the root ($LLPF_HOME), "" for the root
ACCESS = "access_granted"  # this browser session gave the right $LLPF_ACCESS_TOKEN
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


@st.cache_resource
def registry() -> Registry:
    """The job registry of this server process, shared by every session and tab."""
    from runner import Registry
    return Registry()


def workspace() -> Path:
    """This session's workspace inside the root (UserError, creating nothing, if it would leave it)."""
    choice = st.session_state.get(WORKSPACE)
    if choice is None:
        choice = st.query_params.get("workspace", "")
    return confine.create_workspace(confine.resolve_workspace(workspace_dir(), choice))


def my_jobs() -> list:
    """The registry's jobs that write into this session's workspace (other visitors' jobs are not shown)."""
    here = workspace()
    return [job for job in registry().jobs() if job.folder is not None and confine.inside(job.folder, here)]


def job(name: str):
    """The job called ``name`` if it belongs to this workspace, else None."""
    found = registry().get(name)
    return found if found and found.folder is not None and confine.inside(found.folder, workspace()) else None


def access_granted(given: str | None = None) -> bool:
    """No $LLPF_ACCESS_TOKEN, this session gave it before, or ``given`` is it (compared in constant time)."""
    token = os.environ.get("LLPF_ACCESS_TOKEN", "")
    if not token or st.session_state.get(ACCESS):
        return True
    if given is not None and hmac.compare_digest(given.encode(), token.encode()):
        st.session_state[ACCESS] = True
        return True
    return False


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
        params = {"run": name, **({"workspace": st.query_params["workspace"]} if "workspace" in st.query_params else {})}
        st.switch_page("views/runs.py", query_params=params)
    except StreamlitPageNotFoundError:
        st.success(f"Started {name}: follow it on the Runs page.")


def show_error(e: Exception) -> None:
    st.error(str(e), icon=":material/error:")
