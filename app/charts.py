"""Figures of the dashboard: pure functions from run tables (pandas) to plotly figures.

No Streamlit here. Long runs (100k ticks) are thinned to a few thousand points per trace before
plotting (``thin``), so charts stay responsive; the first and last tick are always kept.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

MAX_POINTS = 2000
MAX_HEATMAP_TICKS = 400
GRID = np.linspace(0.0, 1.0, 101)
ROLLING, EVAL = "#f6ad55", "#2b6cb0"  # orange: minibatch losses while training; blue: the point in eval mode
# One clearly different colour per method (Streamlit's theme pairs a dark and a light shade of each hue,
# which made two methods look alike); the LLPF searches are drawn thick, the other methods thin.
METHOD_COLOURS = {"m2m": "#d62728", "m2o": "#9467bd", "to_vs": "#8c564b", "cross_sphere": "#e377c2",
                  "linear": "#7f7f7f", "bezier": "#1f77b4", "rebasin": "#2ca02c"}
RUN_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
               "#bcbd22", "#7f7f7f"]
ACCURACY_AXIS = dict(range=[0, 1.02], tickformat=".0%")  # accuracies are fractions: 0 to 100 %


def thin(frame: pd.DataFrame, max_points: int = MAX_POINTS, column: str = "tick") -> pd.DataFrame:
    """At most ``max_points`` distinct values of ``column``, evenly spaced, first and last kept."""
    values = frame[column].unique() if len(frame) else []
    if len(values) <= max_points:
        return frame
    keep = values[np.unique(np.linspace(0, len(values) - 1, max_points).round().astype(int))]
    return frame[frame[column].isin(keep)]


def _layout(fig: go.Figure, title: str, x: str, y: str | None) -> go.Figure:
    """Title, axis titles and a legend under the plot: above it, plotly's toolbar covered it on hover."""
    fig.update_layout(title=title, xaxis_title=x, yaxis_title=y, margin=dict(l=10, r=10, t=40, b=10),
                      legend=dict(orientation="h", yanchor="top", y=-0.25, x=0, xanchor="left"),
                      height=360)
    return fig


def _line(fig: go.Figure, frame: pd.DataFrame, x: str, y: str, name: str, **kwargs) -> None:
    rows = frame[[x, y]].dropna()
    fig.add_trace(go.Scatter(x=rows[x], y=rows[y], name=name, mode="lines", **kwargs))


def barrier(baseline: pd.DataFrame | None) -> float | None:
    """The straight-line barrier: the highest train loss on the line between the two modes."""
    return float(baseline["train_loss"].max()) if baseline is not None and len(baseline) else None


def loss_figure(metrics: pd.DataFrame, baseline: pd.DataFrame | None = None) -> go.Figure:
    """Train loss along the search: the rolling minibatch loss and the eval-mode loss of each point,
    with the straight-line barrier as a reference."""
    m = thin(metrics)
    fig = go.Figure()
    _line(fig, m, "tick", "train_loss_rolling", "rolling (train mode)", line=dict(width=1, color=ROLLING))
    _line(fig, m, "tick", "train_loss", "eval mode", line=dict(width=2, color=EVAL))
    level = barrier(baseline)
    if level is not None:
        fig.add_hline(y=level, line_dash="dash", line_color="firebrick",
                      annotation_text=f"straight-line barrier {level:.3g}", annotation_position="top left")
    return _layout(fig, "Train loss", "tick", "loss")


def distance_figure(metrics: pd.DataFrame) -> go.Figure:
    """The whole model's distance to the destination, relative to tick 0: it falls while the loss stays low."""
    m = thin(metrics)
    fig = go.Figure()
    _line(fig, m, "tick", "distance_rel", "distance to the destination", line=dict(width=2, color=EVAL))
    fig = _layout(fig, "Distance to the destination", "tick", "distance / distance at tick 0")
    fig.update_yaxes(rangemode="tozero")
    return fig


def accuracy_figure(metrics: pd.DataFrame) -> go.Figure:
    m = thin(metrics)
    fig = go.Figure()
    _line(fig, m, "tick", "train_acc_rolling", "rolling (train mode)", line=dict(width=1, color=ROLLING))
    _line(fig, m, "tick", "train_acc", "eval mode", line=dict(width=2, color=EVAL))
    fig = _layout(fig, "Train accuracy", "tick", "accuracy")
    fig.update_yaxes(**ACCURACY_AXIS)
    return fig


def test_figure(metrics: pd.DataFrame) -> go.Figure:
    """Test loss (left axis) and accuracy (right axis) of the evaluated points."""
    m = thin(metrics)
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    for column, name, right in (("test_loss", "test loss", False), ("test_acc", "test accuracy", True)):
        rows = m[["tick", column]].dropna()
        fig.add_trace(go.Scatter(x=rows["tick"], y=rows[column], name=name, mode="lines"), secondary_y=right)
    fig.update_yaxes(title_text="loss", secondary_y=False)
    fig = _layout(fig, "Test loss and accuracy", "tick", None)
    fig.update_yaxes(title_text="accuracy", secondary_y=True, **ACCURACY_AXIS)
    return fig


def _layer_lines(layers: pd.DataFrame, column: str, highlight: set[str], title: str, y: str) -> go.Figure:
    frame = thin(layers)
    fig = go.Figure()
    for name, rows in frame.groupby("layer", sort=False):
        hot = not highlight or name in highlight
        _line(fig, rows, "tick", column, name, line=dict(width=2.5 if hot else 1), opacity=1.0 if hot else 0.35)
    fig = _layout(fig, title, "tick", y)
    # One entry per layer: a legend above the plot would wrap onto the title, so it stands to the right.
    fig.update_layout(legend=dict(orientation="v", x=1.02, xanchor="left", y=1.0, yanchor="top"))
    return fig


def layer_distance_figure(layers: pd.DataFrame, highlight: list[str] = ()) -> go.Figure:
    """Per-layer distance to the destination, relative to tick 0; the current phase's layers bold."""
    return _layer_lines(layers, "distance_rel", set(highlight), "Distance to the destination, per layer",
                        "distance / distance at tick 0")


def variance_figure(layers: pd.DataFrame, highlight: list[str] = ()) -> go.Figure:
    """Per-layer variance relative to its target sphere (1.0 is on the sphere)."""
    fig = _layer_lines(layers, "variance_rel", set(highlight), "Variance relative to the target sphere",
                       "variance / target")
    fig.add_hline(y=1.0, line_dash="dot", line_color="gray")
    return fig


def layer_heatmap(layers: pd.DataFrame, highlight: list[str] = (), column: str = "distance_rel") -> go.Figure:
    """Layer × tick heatmap of ``column``; the current phase's layers are marked with ▶."""
    frame = thin(layers, MAX_HEATMAP_TICKS)
    order = list(dict.fromkeys(frame["layer"]))
    grid = frame.pivot_table(index="layer", columns="tick", values=column, aggfunc="last").reindex(order)
    labels = [f"▶ {n}" if n in set(highlight) else n for n in grid.index]
    fig = go.Figure(go.Heatmap(z=grid.to_numpy(), x=grid.columns, y=labels, colorscale="Viridis",
                               colorbar=dict(title=column)))
    fig = _layout(fig, "Distance to the destination (layer × tick)", "tick", None)
    fig.update_layout(height=max(300, 18 * len(order) + 120))
    fig.update_yaxes(autorange="reversed")
    return fig


def continuity_figure(metrics: pd.DataFrame) -> go.Figure:
    """The highest loss on the segment between consecutive points, per tick."""
    m = thin(metrics)
    fig = go.Figure()
    _line(fig, m, "tick", "continuity_max_loss", "max loss between tick-1 and tick")
    _line(fig, m, "tick", "train_loss", "point's own loss", line=dict(dash="dot"))
    return _layout(fig, "Continuity check", "tick", "loss")


def continuity_detail_figure(continuity: pd.DataFrame, tick: int) -> go.Figure:
    """Loss and accuracy on the segment from the point of tick-1 (α=0) to that of ``tick`` (α=1)."""
    rows = continuity[continuity["tick"] == tick].sort_values("alpha")
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=rows["alpha"], y=rows["loss"], name="loss", mode="lines+markers"))
    fig.add_trace(go.Scatter(x=rows["alpha"], y=rows["acc"], name="accuracy", mode="lines+markers"),
                  secondary_y=True)
    fig = _layout(fig, f"Between tick {tick - 1} and tick {tick}", "α", "loss")
    fig.update_yaxes(title_text="accuracy", secondary_y=True, **ACCURACY_AXIS)
    return fig


def position(metrics: pd.DataFrame, path: pd.DataFrame | None = None) -> pd.Series:
    """Normalised position along the path, 0 at the start mode and 1 at the path's end: the arc length of
    path.csv (what every page means by it), interpolated at the metrics' ticks; without a path.csv yet
    (a run still going), the fraction of the ticks run."""
    ticks = metrics["tick"].astype(float)
    if path is not None and len(path) >= 2:
        return pd.Series(np.interp(ticks, path["tick"].astype(float), path["position"]), index=metrics.index)
    span = ticks.iloc[-1] - ticks.iloc[0] if len(ticks) else 0.0
    return (ticks - ticks.iloc[0]) / span if span else ticks * 0.0


def path_vs_line_figure(metrics: pd.DataFrame, baseline: pd.DataFrame | None,
                        column: str = "train_loss", marker: int | None = None,
                        path: pd.DataFrame | None = None) -> go.Figure:
    """The path's loss against the straight line's, both over a normalised position from 0 to 1."""
    m = thin(metrics).assign(position=lambda f: position(f, path))
    fig = go.Figure()
    _line(fig, m, "position", column, "LLPF path", line=dict(width=2.5))
    if baseline is not None and len(baseline):
        fig.add_trace(go.Scatter(x=baseline["alpha"], y=baseline[column], name="straight line",
                                 mode="lines+markers", line=dict(dash="dash")))
    if marker is not None and len(metrics):
        at = float(position(pd.DataFrame({"tick": [metrics["tick"].iloc[0], marker, metrics["tick"].iloc[-1]]}),
                            path).iloc[1])
        fig.add_vline(x=at, line_color="gray", annotation_text=f"tick {marker}")
    return _layout(fig, "Path vs straight line", "normalised position (0 = start mode, 1 = end)",
                   column.replace("_", " "))


def on_grid(metrics: pd.DataFrame, column: str) -> np.ndarray:
    """``column`` resampled on a grid of 101 normalised positions (NaN rows dropped)."""
    rows = (metrics if "position" in metrics else metrics.assign(position=position(metrics)))
    rows = rows[["position", column]].dropna()
    if len(rows) < 2:
        return np.full(len(GRID), np.nan)
    return np.interp(GRID, rows["position"], rows[column])


def compare_figure(runs: dict[str, pd.DataFrame], column: str) -> go.Figure:
    """Each run's ``column`` over the normalised position (a ``position`` column, else the ticks'), with the
    mean, and from three runs on the mean ± one standard deviation. The band is drawn first, under the
    runs: with two runs it would only retrace them."""
    frames = {n: f if "position" in f else f.assign(position=position(f)) for n, f in runs.items()}
    curves = [on_grid(f, column) for f in frames.values()]
    fig = go.Figure()
    if len(curves) >= 3:
        stack = np.vstack(curves)
        mean, std = np.nanmean(stack, axis=0), np.nanstd(stack, axis=0)
        fig.add_trace(go.Scatter(x=np.concatenate([GRID, GRID[::-1]]),
                                 y=np.concatenate([mean + std, (mean - std)[::-1]]), fill="toself",
                                 name="mean ± std", line=dict(width=0), fillcolor="rgba(120,120,120,0.2)"))
    for i, (name, frame) in enumerate(frames.items()):
        _line(fig, thin(frame, column="tick" if "tick" in frame else "position"), "position", column, name,
              line=dict(width=1.5, color=RUN_COLOURS[i % len(RUN_COLOURS)]))
    if len(curves) >= 2:
        fig.add_trace(go.Scatter(x=GRID, y=np.nanmean(np.vstack(curves), axis=0), name="mean", mode="lines",
                                 line=dict(width=2, color="black", dash="dash")))
    fig = _layout(fig, column.replace("_", " "), "normalised position along the path (arc length)", column)
    if column.endswith("_acc"):
        fig.update_yaxes(**ACCURACY_AXIS)
    return fig


def methods_figure(paths: list[tuple[str, str, pd.DataFrame]], column: str, title: str,
                   barrier: float | None = None, emphasised: frozenset[str] = frozenset()) -> go.Figure:
    """Several runs on one pair, (label, algorithm, path table) each, over path.csv's position: one colour
    per method, the ``emphasised`` ones (the LLPF searches: the registry's walkers) thick and in front."""
    fig = go.Figure()
    for label, algorithm, path in sorted(paths, key=lambda p: p[1] in emphasised):
        llpf = algorithm in emphasised
        fig.add_trace(go.Scatter(x=path["position"], y=path[column], name=label, mode="lines+markers",
                                 line=dict(width=3.5 if llpf else 1.5, color=METHOD_COLOURS.get(algorithm)),
                                 marker=dict(size=5 if llpf else 3)))
    if barrier is not None:
        fig.add_hline(y=barrier, line_dash="dot", line_color="firebrick",
                      annotation_text=f"straight-line barrier {barrier:.3g}", annotation_position="top left")
    fig = _layout(fig, title, "normalised position along the path (arc length)", column.replace("_", " "))
    if column.endswith("_acc"):
        fig.update_yaxes(**ACCURACY_AXIS)
    return fig


def independence_figure(table: pd.DataFrame, threshold: float) -> go.Figure:
    """Per-layer cosine similarity of two modes' weights; near 0 means independent."""
    fig = go.Figure(go.Bar(x=table["layer"], y=table["cosine"], name="cosine"))
    for level in (threshold, -threshold):
        fig.add_hline(y=level, line_dash="dash", line_color="gray")
    fig = _layout(fig, "Cosine similarity per layer", "layer", "cosine")
    fig.update_yaxes(range=[-1, 1])
    return fig
