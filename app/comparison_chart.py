"""Figures of the methods comparison over a sweep (llpf_core.path_bands): no Streamlit here."""
from __future__ import annotations

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

COLORS = px.colors.qualitative.Plotly


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def bands_figure(bands: pd.DataFrame) -> go.Figure:
    """Each method's train loss against position along its path: the mean over the pairs as a line, the
    band from the best to the worst pair shaded (one legend entry per method toggles both)."""
    fig = go.Figure()
    for i, (method, g) in enumerate(bands.groupby("method", sort=False)):
        color, pairs = COLORS[i % len(COLORS)], int(g["pairs"].iloc[0])
        x = list(g["position"])
        fig.add_trace(go.Scatter(x=x + x[::-1], y=list(g["high"]) + list(g["low"])[::-1], fill="toself",
                                 fillcolor=_rgba(color, 0.18), line=dict(width=0), hoverinfo="skip",
                                 legendgroup=method, showlegend=False, name=f"{method} band"))
        fig.add_trace(go.Scatter(x=x, y=g["mean"], mode="lines", line=dict(color=color), legendgroup=method,
                                 name=f"{method} ({pairs} pairs)"))
    fig.update_layout(title="Train loss along the path: mean over the pairs, band from best to worst pair",
                      xaxis_title="position along the path", yaxis_title="train loss", height=420,
                      margin=dict(l=10, r=10, t=40, b=10))
    return fig
