"""Methods: every run on one pair of endpoints overlaid by position along its path, with a cost table."""
from pathlib import Path

import charts
import pandas as pd
import state
import streamlit as st
import sweep_comparison

from llpf_core import UserError, get_method, list_methods, method_label, resolve_config

# The methods one click runs on a pair: every registered one between two modes that works with any model's
# defaults (not m2o, to_vs or cross_sphere, which need a preset of their own).
COMPARED = [m for m in list_methods() if get_method(m).needs_end and not get_method(m).needs_preset]
# Straight lines with REPAIR (curve.repair) are compared as methods of their own.
REPAIRED = {"rebasin + REPAIR": ("rebasin", ["curve.repair=true"])}

st.title("Methods side by side")
runs = [r for r in (state.read_run(p) for p in state.run_dirs()) if r is not None and r.info.get("end")]
pairs: dict[tuple, list] = {}
for run in runs:
    key = (run.info["start"]["sha256"], run.info["end"]["sha256"])
    pairs.setdefault(key, []).append(run)
if not pairs:
    st.info("No runs between two modes yet: start one on the Search page or with `connect --algorithm ...`.")
    sweep_comparison.show()
    st.stop()


def _label(key: tuple) -> str:
    first = pairs[key][0].info
    return f"{Path(first['start']['path']).name} -> {Path(first['end']['path']).name} ({len(pairs[key])} runs)"


key = st.selectbox("Endpoints", list(pairs), format_func=_label, key="methods_pair")


def _run_missing(first, missing: list[str]) -> list[str]:
    """Start one background job per missing method on this pair (queued behind the job limit)."""
    from jobs import unique_run_name
    start, end = first.info["start"], first.info["end"]
    names = []
    for method in missing:
        algorithm, overrides = REPAIRED.get(method, (method, []))
        cfg = resolve_config(start["meta"]["model"], start["meta"]["dataset"], algorithm,  # as the CLI's
                             overrides=overrides).config
        name = unique_run_name(state.runs_dir(), method.replace(" + REPAIR", "-repair"),
                               {j.name for j in state.my_jobs()})
        state.visitor().start_search(name, start["path"], end["path"], cfg, state.runs_dir() / name)
        names.append(name)
    return names
paths, rows, barriers = [], [], []
for run in pairs[key]:
    path = run.path_table
    summary = run.info.get("summary", {})
    label = f"{method_label(run)} ({run.name})"
    if len(path):
        paths.append((label, run.info["algorithm"], path))
    barrier, top = summary.get("barrier"), summary.get("path_max_train_loss")
    if barrier is not None:
        barriers.append(barrier)  # the same straight line for every run on the pair
    # As the CLI says it: how many times lower the path's highest loss is than the straight line's barrier.
    rows.append({"method": method_label(run), "run": run.name, "path max": top, "barrier": barrier,
                 "barrier / path max": barrier / top if top and barrier is not None else None,
                 "path length": summary.get("path_length"), "SGD steps": summary.get("sgd_steps"),
                 "wall s": summary.get("wall_s")})
walkers = frozenset(m for m in list_methods() if get_method(m).walks)  # LLPF and its kind: drawn in front
loss = charts.methods_figure(paths, "train_loss", "Train loss along the path", max(barriers, default=None), walkers)
acc = charts.methods_figure(paths, "test_acc", "Test accuracy along the path", emphasised=walkers)
left, right = st.columns(2)
left.plotly_chart(loss, width="stretch")
right.plotly_chart(acc, width="stretch")
st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")

have = {method_label(run) for run in pairs[key]}
missing = [m for m in [*COMPARED, *REPAIRED] if m not in have]
started = [j for j in state.my_jobs() if j.name in st.session_state.get("methods_jobs", [])]
STARTED_LIVE = any(j.live for j in started)  # as drawn now: the fragment reruns the page when they end
if missing and not any(j.live for j in started):
    if st.button(f"Run the missing methods ({', '.join(missing)})", type="primary", key="run_missing"):
        try:
            st.session_state["methods_jobs"] = _run_missing(pairs[key][0], missing)
        except UserError as e:
            state.show_error(e)  # where the user clicked, and it stays: no rerun
        else:
            st.rerun()
elif not missing:
    st.caption("Every method has a run on this pair.")


@st.fragment(run_every=state.REFRESH_S if STARTED_LIVE else None)
def _progress() -> None:
    jobs = [j for j in state.my_jobs() if j.name in st.session_state.get("methods_jobs", [])]
    for j in jobs:
        detail = f" · {state.plain(j.message)}" if j.live and j.message else ""
        st.write(f"{state.plain(j.name)}: {j.status}{detail}")
    if jobs and not any(j.live for j in jobs) and STARTED_LIVE:
        st.rerun()  # the last one finished: draw the new runs and count them in the endpoint list


_progress()
sweep_comparison.show()
