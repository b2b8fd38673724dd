"""Runs: the live view of one search, from this dashboard or from any process writing the run folder."""
import charts
import state
import streamlit as st
from jobs import folder_progress

from llpf_core import UserError, match_layers

VIEWS = ["Loss and accuracy", "Layers", "Continuity"]

st.title("Runs")
mine = state.visitor()  # this workspace's jobs
dirs = {p.name: p for p in state.run_dirs()}
for job in state.my_jobs():  # a demo still training has no run folder yet
    if job.kind in ("search", "demo") and job.run_dir is not None:  # a sweep's is its sweep folder
        dirs.setdefault(job.name, job.run_dir)
if not dirs:
    st.info("No runs yet. Start one on the Search page, or run the demo from Home.")
    st.stop()

names = list(dirs)
wanted = state.selected_run()
name = st.selectbox("Run", names, index=names.index(wanted) if wanted in names else 0, key="live_run")
if name != st.query_params.get("run"):
    state.select_run(name)
run_dir = dirs[name]


def current_status(job, run) -> str:
    return job.status if job and job.live else (run.status if run else "starting")


def controls(job, run) -> None:
    """Pause / Resume / Stop. Resume continues a paused job in place, or a stopped or failed run (also
    one from the CLI) from its checkpoint in a new background job. Drawn on full reruns only: the live
    status below asks for one when the status changes."""
    cols = st.columns([1, 1, 1, 5])
    try:
        if cols[0].button("Pause", key="pause", disabled=not (job and job.status == "running")):
            mine.pause(name)
            st.rerun()
        resumable = (job and job.status in ("paused", "pausing")) or (
            not (job and job.live) and run is not None and run.status in ("stopped", "failed", "paused"))
        if cols[1].button("Resume", key="resume", disabled=not resumable):
            if job and job.live:
                mine.resume(name)
            else:
                mine.start_search(name, None, None, None, run_dir, resume=True)
            st.rerun()
        if cols[2].button("Stop", key="stop", disabled=not (job and job.live)):
            mine.stop(name)
            st.rerun()
    except UserError as e:
        state.show_error(e)


def phase_layers(run, metrics, layer_names: list[str]) -> list[str]:
    """The layers the current phase moves (highlighted in the layer charts)."""
    if not len(metrics) or not layer_names:
        return []
    stage, _, index = str(metrics["phase"].iloc[-1]).partition(":")
    cfg = run.config
    phases = cfg.phases if stage == "m2m" or cfg.algorithm != "cross_sphere" else []
    if not phases or not index.isdigit() or int(index) >= len(phases):
        return layer_names
    try:
        return match_layers(phases[int(index)].layers, layer_names, "phase")
    except UserError:  # a pattern names buffers only
        return layer_names


def is_live(job, run) -> bool:
    """A job of this dashboard is going, or (a CLI run) the folder says it is running."""
    if job is not None:
        return job.live
    return bool(run and run.status in ("running", "paused"))


def read_job_and_run():
    return state.job(name), state.read_run(run_dir) if (run_dir / "run.json").exists() else None


JOB, RUN = read_job_and_run()
LIVE = is_live(JOB, RUN)
STATUS = current_status(JOB, RUN)
CHART_EVERY = state.chart_refresh_s(state.table(RUN, "metrics") if RUN else None)
REDRAW_EVERY = CHART_EVERY if LIVE and STATUS != "paused" else None  # a paused or ended run does not change
YOUNG_AND_LIVE = REDRAW_EVERY == state.YOUNG_CHART_REFRESH_S
controls(JOB, RUN)


@st.fragment(run_every=state.REFRESH_S if LIVE else None)
def live_status() -> None:
    """Status and progress, every REFRESH_S while the run is live. A new status (the buttons depend on
    it) or the end of the run asks for a full rerun, which also stops this refresh."""
    job, run = read_job_and_run()
    status = current_status(job, run)
    if status != STATUS or (LIVE and not is_live(job, run)):
        st.rerun()
    # A demo job goes on after its search (its landscape plane): the search's status is the run's.
    shown = run.status if run is not None and run.status == "finished" else status
    detail = state.plain(job.message) if job and job.message else ""
    detail = detail[len(shown):] if detail.startswith(shown) else f" · {detail}" if detail else ""
    st.markdown(f"**Status:** `{shown}`{detail}")  # "`finished` at tick 1500", not "finished · finished at ..."
    if run is None:
        if job and job.error:
            st.error(state.plain(job.error))
        return
    error = (job.error if job else None) or run.error
    if error:
        st.error(f"The run failed: {state.plain(error)}")
    progress = job.progress if job and job.progress.total else folder_progress(run)
    speed = (f"{progress.ticks_per_s:.1f} ticks/s · {progress.iterations_per_s:.0f} SGD steps/s"
             if progress.ticks_per_s else "measuring speed")
    eta = f" · ETA {progress.eta_s:.0f} s" if status == "running" and progress.eta_s is not None else ""
    st.progress(progress.fraction, text=f"tick {progress.tick} / {progress.total} · {speed}{eta}")
    if job is None and run.status == "running":
        st.caption("Not started from this dashboard: following its run folder.")


@st.fragment(run_every=REDRAW_EVERY)
def live_charts() -> None:
    """The run's charts, redrawn every CHART_EVERY seconds while it is live: often while the run is young,
    then less often (a full rerun switches the interval, as a fragment cannot change its own)."""
    waiting = "The charts appear with the search's first tick"
    if not (run_dir / "run.json").exists():
        st.info(f"{waiting}; the search has not started yet (the demo trains its two modes first).",
                icon=":material/hourglass_top:")
        return
    run = state.read_run(run_dir)
    metrics = state.table(run, "metrics")
    if LIVE and state.chart_refresh_s(metrics) != CHART_EVERY:
        st.rerun()
    if not len(metrics):
        st.info(f"{waiting}." if LIVE else "Nothing to chart: this run ended before it logged its first point; "
                "resume it, or start it again.", icon=":material/info:")
        return
    view = st.segmented_control("Charts", VIEWS, default=VIEWS[0], key="live_view") or VIEWS[0]
    if view == VIEWS[0]:
        left, right = st.columns(2)
        left.plotly_chart(charts.loss_figure(metrics, state.table(run, "baseline")), key="c_loss")
        right.plotly_chart(charts.distance_figure(metrics), key="c_distance")
        if YOUNG_AND_LIVE:  # every redraw costs the browser CPU that the search needs: two charts only
            st.caption("Train accuracy and the test metrics follow once the run is "
                       f"{state.YOUNG_RUN_S:.0f} s old, paused or done.")
        else:
            left.plotly_chart(charts.accuracy_figure(metrics), key="c_acc")
            right.plotly_chart(charts.test_figure(metrics), key="c_test")
    elif view == VIEWS[1]:
        layers = state.table(run, "layers")
        if len(layers):
            hot = phase_layers(run, metrics, list(dict.fromkeys(layers["layer"])))
            left, right = st.columns(2)
            left.plotly_chart(charts.layer_distance_figure(layers, hot), key="c_dist")
            right.plotly_chart(charts.variance_figure(layers, hot), key="c_var")
            st.plotly_chart(charts.layer_heatmap(layers, hot), key="c_heat")
    else:
        continuity = state.table(run, "continuity")
        st.plotly_chart(charts.continuity_figure(metrics), key="c_cont")
        if len(continuity):
            ticks = sorted(continuity["tick"].unique())
            worst = int(metrics.loc[metrics["continuity_max_loss"].idxmax(), "tick"]) \
                if metrics["continuity_max_loss"].notna().any() else int(ticks[-1])
            tick = st.select_slider("Drill into tick", ticks, value=worst, key="cont_tick")
            st.plotly_chart(charts.continuity_detail_figure(continuity, int(tick)), key="c_cont_detail")
    st.caption(f"last tick {int(metrics['tick'].iloc[-1])} · status {state.plain(run.status)}"
               + (f" · charts redraw every {CHART_EVERY:g} s while the run is live" if LIVE else ""))


live_status()
live_charts()
