"""Explore: scrub along a path, compare it with the straight line, and download points, tables and figures."""
import charts
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

left, right = st.columns(2)
figures = {"path-vs-line": charts.path_vs_line_figure(metrics, baseline, marker=tick),
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
points = dict(run.points())
saved = [t for t in points if t <= tick] or list(points)
if saved:
    point_tick = max(saved) if tick not in points else tick
    label = f"Point at tick {point_tick}" + ("" if point_tick == tick else f" (the nearest saved point before {tick})")
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

st.subheader("Landscape")
st.caption("The loss over the plane through the start mode A, the end mode B and one saved point P: the "
           "straight line (dashed) crosses the barrier, the path goes around it. A path in many dimensions is "
           "not in a plane: each point's off-plane residual (/ |B - A|) is its colour and in its hover.")
if not run.info.get("end"):
    st.info("This run has no end mode (M2O to the origin), so there is no plane through A, B and a path point.")
else:
    import landscape_chart
    import llpf_core
    computed = llpf_core.list_landscapes(run)
    cols = st.columns(3)
    choice = cols[0].selectbox("Point P", ["farthest from the line", *points], key=f"ls_point_{name}",
                               format_func=lambda t: t if isinstance(t, str) else f"tick {t}")
    size = cols[1].selectbox("Grid", [21, 31, 41], key=f"ls_grid_{name}")
    if cols[2].button("Compute landscape", key=f"ls_compute_{name}"):
        bar = st.progress(0.0, text="evaluating the grid ...")
        try:
            llpf_core.compute_landscape(run, None if isinstance(choice, str) else choice, size,
                                                on_progress=lambda d, t: bar.progress(d / t, text=f"{d}/{t} points"))
            computed = llpf_core.list_landscapes(run)
        except llpf_core.UserError as e:
            state.show_error(e)
    if computed:
        shown_tick = st.selectbox("Plane", computed, index=len(computed) - 1, key=f"ls_shown_{name}",
                                  format_func=lambda t: f"through the point at tick {t}")
        plane = llpf_core.load_landscape(run, shown_tick)
        fig = landscape_chart.landscape_figure(plane.grid, plane.info, marker=tick)
        st.plotly_chart(fig, key="x_landscape")
        if not plane.complete:
            st.caption(f"{len(plane.grid)} of {plane.info['grid'] ** 2} grid points computed; compute again to continue.")
        cols = st.columns(2)
        cols[0].download_button("landscape.html", fig.to_html(include_plotlyjs="cdn"),
                                file_name=f"{run.name}-landscape-{shown_tick:06d}.html", mime="text/html",
                                key="dl_landscape_html")
        cols[1].download_button("grid.csv", (plane.path / "grid.csv").read_bytes(),
                                file_name=f"{run.name}-landscape-{shown_tick:06d}-grid.csv", mime="text/csv",
                                key="dl_landscape_grid")
