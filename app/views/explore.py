"""Explore: scrub along a path, compare it with the straight line, see it on the landscape plane, and download
points, tables and figures."""
from pathlib import Path

import charts
import confine
import state
import streamlit as st

TABLES = ("metrics", "layers", "continuity", "baseline")

st.title("Explore")
runs = [r for r in map(state.read_run, state.run_dirs()) if r is not None and len(state.table(r, "metrics"))]
if not runs:
    st.info("No runs with results yet. Start one on the Search page, or run the demo from Home.")
    st.stop()
names = [r.name for r in runs]
wanted = state.selected_run()
name = st.selectbox("Run", names, index=names.index(wanted) if wanted in names else 0, key="explore_run",
                    format_func=lambda n: f"{n} ({runs[names.index(n)].status})")
if name != st.query_params.get("run"):
    state.select_run(name)
run = runs[names.index(name)]
metrics, layers, baseline = state.table(run, "metrics"), state.table(run, "layers"), state.table(run, "baseline")

ticks = [int(t) for t in metrics["tick"]]
tick = st.select_slider("Tick", ticks, value=ticks[-1], key=f"explore_tick_{name}")
row = metrics[metrics["tick"] == tick].iloc[-1]
evaluated = metrics[(metrics["tick"] <= tick) & metrics["train_loss"].notna()]
shown = evaluated.iloc[-1] if len(evaluated) else row
cols = st.columns(5)
for col, key, label in zip(cols, ("train_loss", "train_acc", "test_loss", "test_acc", "distance_rel"),
                           ("train loss", "train acc", "test loss", "test acc", "distance / start")):
    value = shown[key] if key != "distance_rel" else row[key]
    col.metric(label, "–" if value != value else f"{value:.4f}")
if int(shown["tick"]) != tick:
    st.caption(f"Loss and accuracy are from tick {int(shown['tick'])}, the last evaluated tick at or before {tick}.")

path_tab, landscape_tab, layerwise_tab = st.tabs(["Path", "Landscape", "Layer-wise"])
points = dict(run.points())
with path_tab:
    left, right = st.columns(2)
    figures = {"path-vs-line": charts.path_vs_line_figure(metrics, baseline, marker=tick, path=run.path_table),
               "train-loss": charts.loss_figure(metrics, baseline)}
    left.plotly_chart(figures["path-vs-line"], key="x_path")
    right.plotly_chart(figures["train-loss"], key="x_loss")
    if len(layers):
        at = layers[layers["tick"] <= tick]
        last = at["tick"].max() if len(at) else layers["tick"].min()
        st.markdown(f"**Per-layer values at tick {int(last)}**")
        st.dataframe(layers[layers["tick"] == last].drop(columns="tick"), hide_index=True, key="x_layers")
        figures["layer-distance"] = charts.layer_distance_figure(layers)
        figures["variance"] = charts.variance_figure(layers)

    st.subheader("Downloads")
    saved = [t for t in points if t <= tick] or list(points)
    if saved:
        point_tick = max(saved) if tick not in points else tick
        label = f"Point at tick {point_tick}" + ("" if point_tick == tick
                                                 else f" (the nearest saved point before {tick})")
        st.download_button(label + " (.safetensors)", points[point_tick].read_bytes(),
                           file_name=f"{run.name}-tick{point_tick:06d}.safetensors", key="dl_point",
                           mime="application/octet-stream")
    cols = st.columns(len(TABLES))
    for col, table_name in zip(cols, TABLES):
        path = run.path / f"{table_name}.csv"
        if path.exists():
            col.download_button(f"{table_name}.csv", path.read_bytes(), file_name=f"{run.name}-{table_name}.csv",
                                mime="text/csv", key=f"dl_{table_name}")
    cols = st.columns(len(figures))
    for col, (fig_name, fig) in zip(cols, figures.items()):
        col.download_button(f"{fig_name}.html", fig.to_html(include_plotlyjs="cdn"),
                            file_name=f"{run.name}-{fig_name}.html", mime="text/html", key=f"dl_fig_{fig_name}")


def _version(other) -> tuple[int, int]:
    """Changes when the run saves a point or rewrites run.json: the projections' cache key."""
    folder = other.path / "points"
    return (folder.stat().st_mtime_ns if folder.is_dir() else 0), (other.path / "run.json").stat().st_mtime_ns


@st.cache_data(max_entries=16, show_spinner="projecting the other runs onto the plane ...")
def _projections(run_path: str, tick: int, others: tuple[tuple[str, tuple[int, int]], ...]) -> dict[str, list[dict]]:
    """Other runs' points on the plane (``others``: their folders and ``_version``s, the cache key), computed
    again only when one of them changed."""
    import llpf_core
    return llpf_core.project_pair_runs(llpf_core.load_run(Path(run_path)), tick,
                                       [llpf_core.load_run(Path(p)) for p, _ in others])


def landscape(run, tick: int) -> None:
    """The plane through A, B and a path point: computed in the background into the run folder, once."""
    import landscape_chart

    import llpf_core
    st.caption("The loss over the plane through the start mode A, the end mode B and one saved point P: the "
               "straight line (dashed) crosses the barrier, the path goes around it. A path in many dimensions "
               "is not in a plane: each point's off-plane residual (/ |B - A|) is its colour and in its hover.")
    if not run.info.get("end"):
        st.info("This run has no end mode (M2O to the origin), so there is no plane through A, B and a path point.")
        return
    if not points:
        st.info("This run has no saved points yet, so there is no point P to span the plane.")
        return
    job_name = f"landscape-{run.name}"
    job = state.job(job_name)
    live = bool(job and job.live)
    cols = st.columns([2, 1, 1, 1])
    choice = cols[0].selectbox("Point P", ["farthest from the line", *points], key=f"ls_point_{run.name}",
                               format_func=lambda t: t if isinstance(t, str) else f"tick {t}")
    size = cols[1].selectbox("Grid", [21, 31, 41, 61], key=f"ls_grid_{run.name}",
                             format_func=lambda n: f"{n} x {n}")
    if cols[2].button("Compute landscape", key=f"ls_compute_{run.name}", disabled=live, type="primary"):
        state.act(lambda: state.visitor().start_landscape(run, None if isinstance(choice, str) else choice, size))
    if live and cols[3].button("Stop", key=f"ls_stop_{run.name}"):
        state.act(lambda: state.visitor().stop(job_name))
    state.follow_job(job_name, live, "The landscape")

    computed = llpf_core.list_landscapes(run)
    if not computed:
        st.caption("No plane computed for this run yet: choose P and the grid, then Compute landscape.")
        return
    def modified(t: int) -> int:  # the run folder's documented layout: landscape/plane-<TICK>/grid.csv
        grid_csv = run.path / "landscape" / f"plane-{t:06d}" / "grid.csv"
        return grid_csv.stat().st_mtime_ns if grid_csv.exists() else 0

    newest = max(computed, key=modified)  # e.g. the one just made
    shown = st.selectbox("Plane", computed, index=computed.index(newest), key=f"ls_shown_{run.name}_{newest}",
                         format_func=lambda t: f"through the point at tick {t}")
    plane = llpf_core.load_landscape(run, shown)
    here = state.workspace()
    same = {r.name: r for r in llpf_core.same_pair_runs(run) if confine.inside(r.path, here)}
    labels = {n: f"{r.info.get('algorithm', '?')}: {n}" for n, r in same.items()}
    overlay = st.multiselect("Other runs on this pair", list(labels), format_func=labels.get,
                             key=f"ls_others_{run.name}", placeholder="none: the path only") if same else []
    others = {}
    if overlay:
        projected = _projections(str(run.path), shown, tuple((str(same[n].path), _version(same[n])) for n in overlay))
        others = {labels[n]: projected[n] for n in overlay if projected.get(n)}
    fig = landscape_chart.landscape_figure(plane.grid, plane.info, marker=tick, others=others)
    st.plotly_chart(fig, key="x_landscape")
    if not plane.complete:
        st.caption(f"{len(plane.grid)} of {plane.info['grid'] ** 2} grid points computed; Compute landscape "
                   f"with the same point and grid continues after them.")
    cols = st.columns(2)
    cols[0].download_button("landscape.html", fig.to_html(include_plotlyjs="cdn"),
                            file_name=f"{run.name}-landscape-{shown:06d}.html", mime="text/html",
                            key="dl_landscape_html")
    cols[1].download_button("grid.csv", (plane.path / "grid.csv").read_bytes(),
                            file_name=f"{run.name}-landscape-{shown:06d}-grid.csv", mime="text/csv",
                            key="dl_landscape_grid")


with landscape_tab:
    landscape(run, tick)

with layerwise_tab:
    if run.info.get("end"):
        import layerwise_view
        layerwise_view.show(f"run-{run.name}", run.path / "layerwise", Path(run.info["start"]["path"]),
                            Path(run.info["end"]["path"]), run_dir=run.path)
    else:
        st.info("This run has no end mode (M2O to the origin): layer-wise connectivity needs two modes.")
