"""The landscape plane as a plotly figure: loss contours (log-spaced levels), A, B and P, the straight
line dashed, and the path through its projected points coloured by their off-plane residual. No Streamlit."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go


def landscape_figure(grid: pd.DataFrame, info: dict, marker: int | None = None,
                     others: dict[str, list[dict]] | None = None, column: str = "train_loss") -> go.Figure:
    """``grid`` and ``info``: a plane's grid.csv and plane.json; ``marker``: a tick to mark on the path;
    ``others``: other runs' projected points on the same pair, by run name."""
    n = info["grid"]
    xs = np.linspace(*info["x"], n)
    ys = np.linspace(*info["y"], n)
    z = np.full(n * n, np.nan)
    with np.errstate(invalid="ignore"):
        z[:len(grid)] = np.log10(np.maximum(grid[column].to_numpy(float), 1e-8))  # rows in grid order: y outer
    z[~np.isfinite(z)] = np.nan  # a diverged grid point (inf or NaN loss) is a gap, not a colour
    finite = z[np.isfinite(z)]
    decades = np.arange(np.floor(finite.min()), np.ceil(finite.max()) + 1) if len(finite) else np.arange(-4, 1)
    fig = go.Figure(go.Contour(x=xs, y=ys, z=z.reshape(n, n), colorscale="Viridis", ncontours=25,
                               colorbar=dict(title=dict(text=column.replace("_", " "), side="right"), thickness=14,
                                             tickvals=decades, ticktext=[f"{10.0 ** d:g}" for d in decades]),
                               customdata=10 ** z.reshape(n, n),
                               hovertemplate="x %{x:.3f}<br>y %{y:.3f}<br>" + column.replace("_", " ")
                                             + " %{customdata:.4g}<extra></extra>"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 0], mode="lines", line=dict(color="white", dash="dash", width=2),
                             name="straight line"))
    path = pd.DataFrame(info["projected"])
    fig.add_trace(go.Scatter(x=path["x"], y=path["y"], mode="lines+markers", line=dict(color="white", width=2),
                             name=f"path (off-plane residual up to {path['residual_rel'].max():.2g})",
                             marker=dict(color=path["residual_rel"], colorscale="Reds", size=7, cmin=0,
                                         line=dict(color="black", width=0.5), showscale=True,
                                         colorbar=dict(title=dict(text="off-plane residual / |B - A|", side="right"),
                                                       thickness=10, x=1.13, len=0.8)),
                             customdata=path[["tick", "residual_rel"]],
                             hovertemplate="tick %{customdata[0]}<br>off-plane residual %{customdata[1]:.3g}"
                                           "<extra></extra>"))
    for name, points in (others or {}).items():
        o = pd.DataFrame(points)
        fig.add_trace(go.Scatter(x=o["x"], y=o["y"], mode="lines+markers", name=name, line=dict(dash="dot"),
                                 customdata=o[["tick", "residual_rel"]],
                                 hovertemplate="point %{customdata[0]}<br>residual %{customdata[1]:.3g}"
                                               "<extra></extra>"))
    px, py = info["p"]
    fig.add_trace(go.Scatter(x=[0, 1, px], y=[0, 0, py], mode="markers+text", text=["A", "B", "P"],
                             textposition="top center", textfont=dict(color="white", size=16),
                             marker=dict(color="white", size=11, symbol="x"), name="A, B, P"))
    if marker is not None and len(path):
        at = path[path["tick"] <= marker]
        row = (at if len(at) else path).iloc[-1]
        fig.add_trace(go.Scatter(x=[row["x"]], y=[row["y"]], mode="markers", name=f"tick {int(row['tick'])}",
                                 marker=dict(color="#f6ad55", size=15, symbol="circle-open", line=dict(width=3))))
    fig.update_layout(title=f"Loss over the plane through A, B and P (tick {info['point_tick']})",
                      xaxis_title="x (A to B)", yaxis_title="y (toward P, in units of |B - A|)",
                      # one unit is |B - A| on both axes; the plot shrinks to fit instead of padding the ranges
                      xaxis=dict(range=info["x"], constrain="domain"),
                      yaxis=dict(range=info["y"], scaleanchor="x", constrain="domain"),
                      margin=dict(l=10, r=10, t=40, b=10), height=520,
                      legend=dict(orientation="h", yanchor="top", y=-0.14, x=0.5, xanchor="center",
                                  bgcolor="#4a4a4a", font=dict(color="white")))
    return fig
