"""Compare: several runs side by side (e.g. one preset on different mode pairs, or every method on one
pair), over the normalised position (path.csv's arc length, as on every page), with mean ± std bands."""
import charts
import pandas as pd
import state
import streamlit as st

from llpf_core import run_summary

METRICS = ["train_loss", "test_loss", "test_acc", "train_acc", "train_loss_rolling", "distance_rel",
           "continuity_max_loss"]

st.title("Compare")


def has_results(run) -> bool:
    """A search's metrics or a path method's path.csv (linear, bezier and rebasin runs log no ticks)."""
    return len(state.table(run, "metrics")) > 0 or len(run.path_table) > 0


def along_path(run):
    """The run's rows with a ``position`` column: its metrics placed by path.csv's arc length, or path.csv."""
    metrics, path = state.table(run, "metrics"), run.path_table
    return metrics.assign(position=charts.position(metrics, path)) if len(metrics) else path


runs = {r.name: r for r in map(state.read_run, state.run_dirs()) if r is not None and has_results(r)}
sweeps_root = state.workspace() / "sweeps"
sweeps = sorted(p.parent.name for p in sweeps_root.glob("*/sweep.json")) if sweeps_root.exists() else []
for sweep in sweeps:  # a sweep's pairs, named SWEEP/PAIR (pair names repeat across sweeps)
    for d in sorted((sweeps_root / sweep / "runs").glob("*/run.json")):
        r = state.read_run(d.parent)
        if r is not None and has_results(r):
            runs[f"{sweep}/{r.name}"] = r
if len(runs) < 1:
    st.info("No runs with results yet. Start some on the Search page.")
    st.stop()
finished = [n for n, r in runs.items() if r.status == "finished"]
group = st.selectbox("A whole sweep as the group", ["(pick runs)", *sweeps], key="compare_sweep") if sweeps else None
if group and group != "(pick runs)":
    chosen = [n for n in runs if n.startswith(f"{group}/")]
else:
    chosen = st.multiselect("Runs", list(runs), default=(finished or list(runs))[:4], key="compare_runs")
if not chosen:
    st.stop()
column = st.selectbox("Metric", METRICS, key="compare_metric")
frames = {n: along_path(runs[n]) for n in chosen}
lacking = [n for n, f in frames.items() if column not in f or f[column].isna().all()]
if lacking:
    st.caption(f"No {column} in {state.plain(', '.join(lacking))}: not every method logs it (e.g. the rolling "
               "minibatch loss is LLPF's).")
st.plotly_chart(charts.compare_figure({n: f for n, f in frames.items() if n not in lacking}, column),
                key="compare_chart")

rows = []
for n in chosen:
    s = run_summary(runs[n])
    rows.append({"run": n, "status": s["status"], "algorithm": s["algorithm"], "ticks": s["ticks"],
                 "barrier": s["barrier"], "max train loss": s["path_max_train_loss"],
                 "final distance_rel": s["final_distance_rel"], "wall s": s["wall_s"]})
summary = pd.DataFrame(rows)
st.dataframe(summary, hide_index=True, key="compare_table")
if len(chosen) >= 2:
    st.caption("Across these runs: max train loss "
               f"{summary['max train loss'].mean():.4g} ± {summary['max train loss'].std():.2g}, barrier "
               f"{summary['barrier'].mean():.4g} ± {summary['barrier'].std():.2g}.")
st.download_button("summary.csv", summary.to_csv(index=False), file_name="llpf-compare.csv", mime="text/csv",
                   key="dl_compare")
