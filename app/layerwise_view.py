"""The layer-wise connectivity of a pair of modes, drawn on Explore (a run's endpoints, stored in the run
folder) and on Search (the two chosen modes, stored in the workspace): computed as a background job, then
the barrier heatmaps and the cumulative curves."""
from __future__ import annotations

from pathlib import Path

import layerwise_chart
import state
import streamlit as st

import llpf_core

EXPLANATION = ("Each row interpolates one layer (a module with parameters: weight, bias and BatchNorm tensors "
               "together) between A and B while every other tensor stays at A (left) or at B (right); the colour "
               "is its train loss above the straight line between A's and B's losses. Red rows carry the barrier. "
               "From A's side at alpha 1 the network is A with one layer of B, which rarely fits: layers are "
               "matched only up to permutations of their units.")


def pair_dir(start: Path, end: Path) -> Path:
    """Where the Search page keeps the analysis of two mode files."""
    return state.workspace() / "layerwise" / f"{start.stem}--{end.stem}"


def show(key: str, out_dir: Path, start: Path | None = None, end: Path | None = None,
         run_dir: Path | None = None) -> llpf_core.Layerwise | None:
    """Compute button, progress and figures for the pair; returns the stored analysis, or None."""
    st.caption(EXPLANATION)
    job_name = f"layerwise-{key}"
    job = state.job(job_name)
    live = bool(job and job.live)
    result = _load(out_dir)
    cols = st.columns([1, 1, 3])
    label = "Compute layer-wise connectivity" if result is None else "Compute again"
    if cols[0].button(label, key=f"lw_compute_{key}", disabled=live, type="primary" if result is None else "secondary"):
        state.act(lambda: state.visitor().start_layerwise(key, start, end, out_dir, run_dir))
    if live and cols[1].button("Stop", key=f"lw_stop_{key}"):
        state.act(lambda: state.visitor().stop(job_name))
    state.follow_job(job_name, live, "The layer-wise analysis")
    if result is None:
        st.caption("Not computed for this pair yet: the digits MLP takes about a second, LeNet-5 about a minute "
                   "on 2 CPU cores.")
        return None
    stale = [p for p in (start, end) if p is not None and p.exists()
             and p.stat().st_mtime_ns > (result.path / "layerwise.json").stat().st_mtime_ns]
    if stale:
        st.warning(f"{state.plain(', '.join(p.name for p in stale))} changed after this analysis; compute it again.")
    info = result.info
    st.caption(f"A: train loss {info['A']['train_loss']:.4g}, B: {info['B']['train_loss']:.4g}; {info['evaluations']} "
               f"states on {info['samples']['train']} train and {info['samples']['test']} test samples "
               f"({info['wall_s']:.1f} s on {info['device']}).")
    heatmap = layerwise_chart.heatmap_figure(result)
    st.plotly_chart(heatmap, key=f"lw_heatmap_{key}")
    curves = layerwise_chart.cumulative_figure(result)
    st.plotly_chart(curves, key=f"lw_curves_{key}")
    st.dataframe(result.summary, hide_index=True, key=f"lw_summary_{key}")
    cols = st.columns(3)
    cols[0].download_button("layerwise.csv", (result.path / "layerwise.csv").read_bytes(),
                            file_name=f"{key}-layerwise.csv", mime="text/csv", key=f"lw_dl_table_{key}")
    cols[1].download_button("summary.csv", (result.path / "summary.csv").read_bytes(),
                            file_name=f"{key}-layerwise-summary.csv", mime="text/csv", key=f"lw_dl_summary_{key}")
    cols[2].download_button("layerwise.html", heatmap.to_html(include_plotlyjs="cdn"),
                            file_name=f"{key}-layerwise.html", mime="text/html", key=f"lw_dl_html_{key}")
    return result


def _load(out_dir: Path) -> llpf_core.Layerwise | None:
    if not (out_dir / "layerwise.json").is_file():
        return None
    try:
        return llpf_core.load_layerwise(out_dir)
    except llpf_core.UserError as e:
        st.error(f"The stored layer-wise analysis cannot be read: {state.plain(str(e))}", icon=":material/error:")
        return None
