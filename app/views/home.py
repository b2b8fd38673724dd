"""Home: what LLPF is, the one-click demo, and the workspace at a glance."""
from pathlib import Path

import state
import streamlit as st

import llpf_core
from llpf_core import UserError

IMAGE = Path(__file__).resolve().parents[2] / "assets" / "images" / "llpf-overview.svg"

st.title("LLPF Explorer")
st.markdown("""
Train the same network twice from different random seeds and you get two **modes**: two different
weight vectors with equally low loss. Walk the **straight line** between them and the loss climbs to a
**barrier** in the middle, so they look like separate valleys. **Low-Loss Path Finding (LLPF)** shows they
are not: it builds a path of networks that all keep a low training loss.

Each tick of a model-to-model (**M2M**) search moves a little toward the destination, one group of layers
at a time in data-flow order, rescales each layer back onto its **variance sphere** (the per-layer weight
norm that training settled on), trains briefly, and corrects the variance again. **M2O** shrinks a mode
toward the origin and **to_vs** moves it onto another mode's sphere; together they connect modes that sit
on different spheres (**cross-sphere**).
""")
explanation = st.empty()  # the sketch at once; the demo's real plane (it needs torch) replaces it below
explanation.image(str(IMAGE), caption="The straight line crosses a barrier; the LLPF path stays in the low-loss "
                                      "region.")

st.subheader("Try it")
st.write("The demo trains two small MLPs on the scikit-learn digits (seeds 1 and 2), then connects them "
         "with M2M. It takes well under a minute on a laptop CPU.")
if st.button("Run the demo", type="primary", key="run_demo"):
    try:
        job = state.visitor().start_demo(state.workspace())
    except UserError as e:
        state.show_error(e)
    else:
        state.open_run(job.name)

state.before_first_torch_import()


def demo_plane():
    """The newest complete landscape plane of a demo run, or None. Only the planes' file times are read
    for the others, so Home stays quick with many runs (the run folder's layout: landscape/plane-*/)."""
    grids = [g for folder in state.run_dirs() if folder.name.startswith("demo-")
             for g in folder.glob("landscape/plane-*/grid.csv")]
    for grid_csv in sorted(grids, key=lambda g: g.stat().st_mtime_ns, reverse=True):
        run = state.read_run(grid_csv.parents[2])
        if run is None:
            continue
        plane = llpf_core.load_landscape(run, int(grid_csv.parent.name.split("-")[1]))
        if plane.complete:
            return run, plane
    return None


found = demo_plane()
if found:
    import landscape_chart
    run, plane = found
    with explanation.container():
        st.plotly_chart(landscape_chart.landscape_figure(plane.grid, plane.info), key="home_landscape")
        st.caption(f"The demo's own plane ({state.plain(run.name)}): the loss over the plane through its two modes "
                   f"A and B and the path point P at tick {plane.info['point_tick']}: the straight line (dashed) "
                   "and the LLPF path through its points, with each point's off-plane residual. Explore's "
                   "Landscape tab has more.")
st.subheader("Workspace")
jobs = state.my_jobs()
cols = st.columns(4)
cols[0].metric("Modes", len(state.mode_files()))
cols[1].metric("Runs", len(state.run_dirs()))
cols[2].metric("Running now", sum(job.live for job in jobs))
cols[3].metric("Device", "GPU" if state.device_label().startswith("GPU") else "CPU")  # "no GPU" is a CPU
name = st.session_state.get(state.WORKSPACE) or "(the root)"
st.caption(f"Workspace {state.plain(name)} · folder {state.plain(state.workspace().resolve())} · "
           f"{state.device_label()}")
