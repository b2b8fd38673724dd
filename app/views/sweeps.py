"""Sweeps: start a sweep as a background job (the `sweep` command in a child process, queued with every
other job; Ray never runs inside this server) and follow its folder: the pairs, the mean +- std band,
each pair's path max and barrier. A visitor sees and controls only their own workspace's sweeps."""
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import state
import streamlit as st
from jobs.limits import sweep_max_pairs, sweep_max_workers

from llpf_core import (
    UserError,
    get_method,
    list_datasets,
    list_methods,
    list_models,
    list_presets,
    load_run,
    read_sweep,
)

GRID = np.linspace(0, 1, 101)
# The methods a sweep runs on each pair: every registered one between two modes (m2o runs to the origin).
METHODS = [m for m in list_methods() if get_method(m).needs_end]
DEFAULT_PRESET = "(the default for the model, dataset and method)"


def position(metrics, path) -> np.ndarray:
    """Each metrics row's normalised position, 0 at the start mode and 1 at the end: the arc length of
    path.csv (interpolated in tick between its saved points) once the run has one, else 1 - distance_rel."""
    if len(path) > 1:
        return np.interp(metrics["tick"], path["tick"], path["position"])
    return 1 - metrics["distance_rel"].to_numpy()


st.title("Sweeps")
mine = state.visitor()
root = state.workspace() / "sweeps"


def sweep_job(folder: Path):
    """This workspace's job for the sweep in ``folder``, if it has one."""
    return mine.get(f"sweep-{folder.name}")


with st.expander("Start a sweep", expanded=not root.exists()):
    c = st.columns(3)
    name = c[0].text_input("Name", "mlp-digits", key="sweep_name", help="A folder name under sweeps/")
    models = list_models()
    model = c[1].selectbox("Model", models, index=models.index("mlp"), key="sweep_model")
    dataset = c[2].selectbox("Dataset", list_datasets(), key="sweep_dataset")
    c = st.columns(2)
    methods = c[0].multiselect("Methods", METHODS, default=["m2m"], key="sweep_methods",
                               help="Each method runs on every pair (`sweep --algorithm a,b,...`)")
    preset = c[1].selectbox("Preset", [DEFAULT_PRESET, *(p.name for p in list_presets() if p.model == model)],
                            key="sweep_preset")
    c = st.columns(3)
    most_pairs, most_workers = sweep_max_pairs(), sweep_max_workers()
    pairs = c[0].number_input("Pairs", 1, most_pairs, min(4, most_pairs), key="sweep_pairs",
                              help=f"At most {most_pairs} on this server (LLPF_SWEEP_MAX_PAIRS)")
    seed = c[1].number_input("First seed", 0, 10**6, 1, key="sweep_seed")
    workers = c[2].number_input("Workers", 1, most_workers, 1, key="sweep_workers",
                                help="1: every pair in one process, small models' pairs batched (their SGD steps "
                                     "stacked; no Ray to start). More: batches of pairs at once on Ray, at most "
                                     f"{most_workers} on this server (LLPF_SWEEP_MAX_WORKERS)")
    if st.button("Start sweep", type="primary", key="start_sweep"):
        try:
            mine.start_sweep(root, name.strip(), model=model, dataset=dataset, pairs=int(pairs), seed=int(seed),
                             workers=int(workers), preset=None if preset == DEFAULT_PRESET else preset,
                             algorithm=",".join(methods) or None)
        except UserError as e:
            state.show_error(e)
        else:
            st.session_state["sweep_folder"] = root / name.strip()  # show the new sweep, not the last one
            st.rerun()

sweeps = sorted(p.parent for p in root.glob("*/sweep.json")) if root.exists() else []
pending = [j.run_dir for j in mine.jobs()  # started, or refused or stopped: its message stays on show
           if j.kind == "sweep" and j.run_dir not in sweeps and j.status != "finished"]
if not sweeps and not pending:
    st.info("No sweeps yet: start one above, or with `llpf sweep --out "
            f"{root}/NAME --model mlp --pairs 4`.")
    st.stop()
folders = sweeps + list(dict.fromkeys(pending))
if st.session_state.get("sweep_folder") not in folders:
    st.session_state.pop("sweep_folder", None)
folder = st.selectbox("Sweep", folders, format_func=lambda p: p.name, key="sweep_folder")
job = sweep_job(folder)
live = job is not None and job.live


@st.fragment(run_every=2 if live else None)
def follow() -> None:
    job = sweep_job(folder)
    running = job is not None and job.live
    if job and job.error:
        st.error(state.plain(job.error))
    b = st.columns(3)
    if running and job.status != "stopping" and b[1].button("Stop", key="sweep_stop"):
        try:
            mine.stop(job.name)
        except UserError as e:
            state.show_error(e)
    if not (folder / "sweep.json").exists():
        if job and not job.error:
            st.caption(state.plain(job.message) if job and job.message else "starting the sweep ...")
        return
    try:
        info = read_sweep(folder)
    except UserError as e:
        state.show_error(e)
        return
    b[0].metric("Status", job.status if running else info["status"])
    if job and job.status == "stopped":
        st.caption(job.message)
    if not running and info["status"] != "finished" and b[1].button("Resume", key="sweep_resume"):
        try:
            mine.resume_sweep(folder)
        except UserError as e:
            state.show_error(e)
        else:
            st.rerun()
    pairs = info["pairs"]
    methods = sorted({p["algorithm"] for p in pairs if p.get("algorithm")})
    if len(methods) > 1:  # one method's runs at a time: their numbers are not to be pooled
        shown = st.selectbox("Method", methods, key=f"sweep_view_method_{folder.name}",
                             help="This sweep ran several methods on each pair; the Methods page compares them")
        pairs = [p for p in pairs if p.get("algorithm") == shown]
    rows, curves, strip = [], {"train_loss": [], "test_acc": []}, []
    for p in pairs:
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
        c[0].metric("Finished pairs", f"{len(strip)} of {len(pairs)}")
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
        col.plotly_chart(fig, width="stretch")
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
    cols[2].plotly_chart(fig, width="stretch")


follow()
