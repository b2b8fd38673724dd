"""Sweeps: start a sweep as a background ``python -m llpf_core sweep`` process (Ray never runs inside
this server) and follow its folder: the pairs, the mean +- std band, each pair's path max and barrier."""
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import plotly.graph_objects as go
import state
import streamlit as st

from llpf_core import load_run, read_sweep

REPO = Path(__file__).resolve().parent.parent.parent
GRID = np.linspace(0, 1, 101)


@dataclass
class Launched:
    proc: subprocess.Popen
    stderr: IO[str]  # a file, not a pipe: a pipe nobody reads while the sweep runs can fill up and stall it

    def running(self) -> bool:
        return self.proc.poll() is None

    def problem(self, out: Path) -> str | None:
        """What the sweep said when it refused its input (exit 2) or ended before it wrote sweep.json (a
        crash: its last line); None otherwise (pair failures are in the sweep's own files)."""
        rc = self.proc.poll()
        if rc is None or rc == 0 or (rc != 2 and (out / "sweep.json").exists()):
            return None
        self.stderr.seek(0)
        lines = self.stderr.read().strip().splitlines()
        return (" ".join(lines) if rc == 2 else lines[-1]) if lines else f"the sweep ended with exit code {rc}"


@st.cache_resource
def processes() -> dict[str, Launched]:
    """The sweep processes this server started, by sweep folder (they outlive page reruns)."""
    return {}


def launch(args: list[str], out: Path) -> None:
    stderr = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen([sys.executable, "-m", "llpf_core", "sweep", "--out", str(out), "--quiet", *args],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr, text=True, start_new_session=True)
    processes()[str(out)] = Launched(proc, stderr)


def position(metrics, path) -> np.ndarray:
    """Each metrics row's normalised position, 0 at the start mode and 1 at the end: the arc length of
    path.csv (interpolated in tick between its saved points) once the run has one, else 1 - distance_rel."""
    if len(path) > 1:
        return np.interp(metrics["tick"], path["tick"], path["position"])
    return 1 - metrics["distance_rel"].to_numpy()


st.title("Sweeps")
root = state.workspace() / "sweeps"
with st.expander("Start a sweep", expanded=not root.exists()):
    with st.form("new_sweep"):
        c = st.columns(6)
        name = c[0].text_input("Name", "mlp-digits")
        model = c[1].text_input("Model", "mlp")
        dataset = c[2].text_input("Dataset", "digits")
        pairs = c[3].number_input("Pairs", 1, 500, 4)
        seed = c[4].number_input("First seed", 0, 10**6, 1)
        workers = c[5].number_input("Workers", 1, 256, 2)
        preset = st.text_input("Preset (empty: the model's default)", "")
        if st.form_submit_button("Start sweep"):
            launch(["--model", model, "--dataset", dataset, "--pairs", str(pairs), "--seed", str(seed),
                    "--workers", str(workers), *(["--preset", preset] if preset else [])], root / name)
            st.toast(f"sweep {name} started")

sweeps = sorted(p.parent for p in root.glob("*/sweep.json")) if root.exists() else []
pending = [Path(k) for k, p in processes().items()  # started, or refused: its error stays on show
           if Path(k) not in sweeps and (p.running() or p.problem(Path(k)))]
if not sweeps and not pending:
    st.info("No sweeps yet: start one above, or with `python -m llpf_core sweep --out "
            f"{root}/NAME --model mlp --pairs 4`.")
    st.stop()
folder = st.selectbox("Sweep", sweeps + pending, format_func=lambda p: p.name)
launched = processes().get(str(folder))
live = launched is not None and launched.running()


@st.fragment(run_every=2 if live else None)
def follow() -> None:
    launched = processes().get(str(folder))
    running = launched is not None and launched.running()
    problem = launched.problem(folder) if launched else None
    if problem:
        st.error(problem)
    if not (folder / "sweep.json").exists():
        if running:
            st.caption("training the modes, starting Ray ...")
        return
    info = read_sweep(folder)
    b = st.columns(3)
    b[0].metric("Status", "running" if running else info["status"])
    if running and b[1].button("Stop"):
        launched.proc.send_signal(signal.SIGINT)
    if not running and info["status"] != "finished" and b[1].button("Resume"):
        launch(["--resume"], folder)
        st.rerun()
    rows, curves, strip = [], {"train_loss": [], "test_acc": []}, []
    for p in info["pairs"]:
        run_dir = folder / p["run"]
        progress, run = 0.0, None
        if (run_dir / "run.json").exists():
            run = load_run(run_dir)
            m = run.metrics
            if len(m):
                progress = float(m["tick"].iloc[-1]) / max(run.config.ticks, 1)
                path = run.path_table  # written when the run finishes
                for col in curves:
                    e = m.dropna(subset=[col])
                    if len(e) > 1:
                        curves[col].append((p["name"], position(e, path), e[col].to_numpy()))
        s = p.get("summary") or {}
        if p["status"] == "finished" and s.get("barrier") is not None:
            strip.append((p["name"], s["path_max_train_loss"], s["barrier"]))
        rows.append({"pair": p["name"], "status": p["status"], "progress": 1.0 if p["status"] == "finished"
                     else progress, "barrier": s.get("barrier"), "path max": s.get("path_max_train_loss"),
                     "error": p.get("error") or ""})
    if strip:  # the paper's consistency claim in two numbers
        c = st.columns(3)
        path_max, barrier = (np.array(v) for v in list(zip(*strip))[1:])
        c[0].metric("Finished pairs", f"{len(strip)} of {len(info['pairs'])}")
        for col, label, v in ((c[1], "Path max train loss", path_max), (c[2], "Straight-line barrier", barrier)):
            col.metric(label, f"{v.mean():.4g} ± {v.std(ddof=1) if len(v) > 1 else 0:.2g}",
                       help="mean ± standard deviation over the finished pairs")
    st.dataframe(rows, column_config={"progress": st.column_config.ProgressColumn(min_value=0, max_value=1)},
                 hide_index=True)
    cols = st.columns(3)
    for col, (metric, series) in zip(cols, curves.items()):
        if not series:  # no empty axes while the pairs are pending
            col.caption(f"{metric.replace('_', ' ')}: drawn once a pair has logged two evaluations.")
            continue
        fig = go.Figure()
        ys = []
        for name, pos, y in series:
            fig.add_scatter(x=pos, y=y, mode="lines", line={"width": 1, "color": "rgba(100,100,100,0.25)"},
                            name=name, showlegend=False)
            order = np.argsort(pos)
            ys.append(np.interp(GRID, pos[order], y[order]))
        if ys:
            mean, std = np.mean(ys, axis=0), np.std(ys, axis=0)
            fig.add_scatter(x=np.r_[GRID, GRID[::-1]], y=np.r_[mean + std, (mean - std)[::-1]], fill="toself",
                            line={"width": 0}, fillcolor="rgba(31,119,180,0.25)", name="mean +- 1 std")
            fig.add_scatter(x=GRID, y=mean, mode="lines", line={"color": "rgb(31,119,180)"}, name="mean")
        fig.update_layout(title=f"{metric.replace('_', ' ')} ({len(ys)} runs)", xaxis_title="normalised position",
                          height=340, margin={"t": 40, "b": 40},
                          legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "x": 1, "xanchor": "right"})
        col.plotly_chart(fig, use_container_width=True)
    fig = go.Figure()
    if not strip:
        cols[2].caption("Path max vs barrier: drawn once a pair has finished.")
        return
    if strip:
        names, path_max, barrier = zip(*strip)
        fig.add_scatter(x=["path max"] * len(strip), y=path_max, mode="markers", text=names, name="path max")
        fig.add_scatter(x=["barrier"] * len(strip), y=barrier, mode="markers", text=names, name="barrier")
    fig.update_layout(title="each pair: path max vs barrier", height=340, margin={"t": 40, "b": 40},
                      showlegend=False, yaxis={"type": "log", "title": "train loss (log scale)", "dtick": 1,
                                               "tickformat": "~g"})  # labelled powers of ten only
    cols[2].plotly_chart(fig, use_container_width=True)


follow()
