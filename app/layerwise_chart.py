"""Layer-wise connectivity as plotly figures: the barrier heatmaps by layer and alpha from A's and B's side,
and the cumulative curves. No Streamlit."""
from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

SIDES = {"A": "A's side (the rest from A)", "B": "B's side (the rest from B)"}
CURVES = {("first", "A"): ("#2b6cb0", "solid"), ("first", "B"): ("#2b6cb0", "dot"),
          ("last", "A"): ("#dd6b20", "solid"), ("last", "B"): ("#dd6b20", "dot")}


def heatmap_figure(result, split: str = "train") -> go.Figure:
    """loss − the line between A's and B's losses for each single layer (rows top to bottom in data-flow
    order) interpolated alone, by alpha, from A's side and from B's; one colour scale, centred at 0."""
    grids = {base: result.excess(base, split) for base in SIDES}
    # the colours span the values strictly between the ends: a layer swapped whole (alpha 0 or 1 on the far
    # side) can lie ten times higher and would wash out the middle; those cells saturate, their hover is exact
    inner = [g[[a for a in g.columns if 0 < a < 1]] for g in grids.values()]
    values = [abs(g.to_numpy()).max() for g in (inner if all(g.shape[1] for g in inner) else grids.values())]
    peak = float(max(values)) or 1.0
    fig = make_subplots(rows=1, cols=2, subplot_titles=list(SIDES.values()), shared_yaxes=True,
                        horizontal_spacing=0.04)
    for col, (base, grid) in enumerate(grids.items(), start=1):
        fig.add_trace(go.Heatmap(z=grid.to_numpy(), x=[f"{a:g}" for a in grid.columns], y=list(grid.index),
                                 zmin=-peak, zmax=peak, colorscale="RdBu_r", showscale=col == 2,
                                 colorbar=dict(title=dict(text="loss above the A–B line", side="right"),
                                               thickness=14),
                                 hovertemplate=f"{base}'s side<br>layer %{{y}}<br>alpha %{{x}}<br>"
                                               f"excess %{{z:.4g}}<extra></extra>", name=f"{base}'s side"),
                      row=1, col=col)
        fig.update_xaxes(title_text="alpha (0 = A, 1 = B)", type="category", row=1, col=col)
    fig.update_yaxes(autorange="reversed", type="category", title_text="layer (data-flow order)", row=1, col=1)
    fig.update_layout(title=f"{split.capitalize()} loss with one layer interpolated, above the straight line's "
                            f"ends", margin=dict(l=10, r=10, t=60, b=10), height=max(300, 60 + 28 * len(result.layers)))
    return fig


def cumulative_figure(result, split: str = "train") -> go.Figure:
    """The barrier when the first k (or the last k) layers in data-flow order are interpolated together,
    from each side; k = n is the whole model, the straight line's barrier."""
    fig = go.Figure()
    for (kind, base), (colour, dash) in CURVES.items():
        rows = result.cumulative(kind)
        fig.add_trace(go.Scatter(x=rows["k"], y=rows[f"{split}_barrier_{base}"], mode="lines+markers",
                                 name=f"{kind} k, {base}'s side", line=dict(color=colour, dash=dash),
                                 customdata=rows["layer"],
                                 hovertemplate="%{customdata}<br>barrier %{y:.4g}<extra></extra>"))
    fig.update_layout(title="Barrier of the first k / last k layers together", xaxis_title="k (layers)",
                      yaxis_title=f"{split} barrier", margin=dict(l=10, r=10, t=40, b=10), height=340,
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, x=1, xanchor="right"))
    fig.update_xaxes(dtick=1)
    return fig
