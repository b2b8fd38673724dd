"""The Methods page's view over a sweep that ran several methods on the same pairs: per method, the path
max as mean ± std over the pairs, the worst pair, SGD steps and wall time, and each method's band of
train loss against position (llpf_core.comparison; the figure in comparison_chart.py)."""
from pathlib import Path

import state
import streamlit as st
from comparison_chart import bands_figure

from llpf_core import UserError, method_table, path_bands, read_sweep, sweep_runs


def _methods(folder: Path) -> list[str]:
    try:
        return read_sweep(folder)["spec"]["algorithm"].split(",")
    except (UserError, KeyError, TypeError):
        return []


def show() -> None:
    st.subheader("Methods over a sweep's pairs")
    root = state.workspace() / "sweeps"
    sweeps = sorted(p.parent for p in root.glob("*/sweep.json")) if root.exists() else []
    if not sweeps:
        st.caption("No sweeps yet. Run several methods on the same pairs to compare them here: "
                   "`python -m llpf_core sweep --out SWEEPS/NAME --algorithm linear,rebasin,bezier,autoneb,m2m` "
                   "(or the Sweeps page).")
        return
    several = [s for s in sweeps if len(_methods(s)) > 1]
    chosen = st.multiselect("Sweeps (add a second sweep on the same seeds, e.g. rebasin with curve.repair=true)",
                            sweeps, default=(several or sweeps)[:1], format_func=lambda p: p.name,
                            key="methods_sweeps")
    try:
        runs = sweep_runs(chosen)
    except UserError as e:
        st.error(str(e))
        return
    table = method_table(runs)
    if table.empty:
        st.info("No finished runs in the chosen sweeps yet.")
        return
    shown = table.copy()
    shown.insert(1, "path max (mean ± std)", [f"{m:.4g} ± {s:.2g}" if s == s else f"{m:.4g}"
                                              for m, s in zip(table["path max mean"], table["path max std"])])
    st.dataframe(shown, hide_index=True, width="stretch")
    st.caption("Path max: the highest train loss among a run's evaluated points. A method is consistent when "
               "its std is small and its worst pair is close to its mean.")
    st.plotly_chart(bands_figure(path_bands(runs)), width="stretch")
