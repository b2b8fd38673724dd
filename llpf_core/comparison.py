"""Methods compared over a sweep's pairs (the paper's Table 1 "consistent / inconsistent" column, measured).

For a sweep that ran several methods on the same pairs (``sweep --algorithm linear,rebasin,bezier,autoneb,
m2m``): per method, the path max train loss as mean ± std over the finished pairs, the worst pair, the
ratio to the straight-line barrier, SGD steps and wall time (``method_table``); and each method's train
loss along its path interpolated onto one position grid, as mean, min and max over the pairs
(``path_bands``). A straight-line run with ``curve.repair`` counts as its own method ("rebasin + REPAIR").
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .errors import UserError
from .runfolder import Run, load_run
from .sweepfolder import read_sweep

GRID = np.linspace(0.0, 1.0, 51)
TABLE_COLUMNS = ["method", "pairs", "path max mean", "path max std", "worst pair", "worst path max",
                 "ratio mean", "barrier mean", "SGD steps mean", "wall s mean", "wall s total"]


def method_label(run: Run) -> str:
    """The run's method as the comparison names it: its algorithm, "+ REPAIR" for a REPAIRed line."""
    algorithm = run.info.get("algorithm", "?")
    curve = (run.info.get("config") or {}).get("curve") or {}
    return f"{algorithm} + REPAIR" if algorithm in ("linear", "rebasin") and curve.get("repair") else algorithm


def sweep_runs(folders: list[str | Path]) -> list[tuple[str, Run]]:
    """(pair, run) for every finished run of the sweep folders (several sweeps on the same seeds add up:
    e.g. a second sweep of ``rebasin --set curve.repair=true``)."""
    out = []
    for folder in folders:
        info = read_sweep(folder)
        for p in info["pairs"]:
            if p.get("status") != "finished":
                continue
            try:
                out.append((p.get("pair", p["name"]), load_run(Path(folder) / p["run"])))
            except UserError:  # a damaged run folder is left out of the comparison, not fatal to it
                continue
    return out


def method_table(runs: list[tuple[str, Run]]) -> pd.DataFrame:
    """One row per method: path max mean ± std over the pairs, the worst pair, ratio, SGD steps, wall."""
    rows = []
    for pair, run in runs:
        s = run.info.get("summary") or {}
        if s.get("path_max_train_loss") is None:
            continue
        rows.append({"method": method_label(run), "pair": pair, "path_max": s["path_max_train_loss"],
                     "barrier": s.get("barrier"), "ratio": s.get("ratio"), "sgd_steps": s.get("sgd_steps"),
                     "wall_s": s.get("wall_s")})
    if not rows:
        return pd.DataFrame(columns=TABLE_COLUMNS)
    frame = pd.DataFrame(rows)
    out = []
    for method, g in frame.groupby("method", sort=False):
        worst = g.loc[g["path_max"].idxmax()]
        out.append({"method": method, "pairs": len(g), "path max mean": g["path_max"].mean(),
                    "path max std": g["path_max"].std(ddof=1) if len(g) > 1 else float("nan"),
                    "worst pair": worst["pair"], "worst path max": worst["path_max"],
                    "ratio mean": pd.to_numeric(g["ratio"]).mean(), "barrier mean": pd.to_numeric(g["barrier"]).mean(),
                    "SGD steps mean": pd.to_numeric(g["sgd_steps"]).mean(),
                    "wall s mean": pd.to_numeric(g["wall_s"]).mean(), "wall s total": pd.to_numeric(g["wall_s"]).sum()})
    return pd.DataFrame(out, columns=TABLE_COLUMNS).sort_values("path max mean", ignore_index=True)


def path_bands(runs: list[tuple[str, Run]], grid: np.ndarray = GRID) -> pd.DataFrame:
    """Per method and grid position: the mean, min and max over the pairs of the train loss along the
    path (each run's path.csv interpolated linearly in position)."""
    curves: dict[str, list[np.ndarray]] = {}
    for _, run in runs:
        path = run.path_table.dropna(subset=["position", "train_loss"])
        if len(path) < 2:
            continue
        curves.setdefault(method_label(run), []).append(np.interp(grid, path["position"], path["train_loss"]))
    rows = []
    for method, ys in curves.items():
        stack = np.vstack(ys)
        rows += [{"method": method, "position": x, "mean": m, "low": lo, "high": hi, "pairs": len(ys)}
                 for x, m, lo, hi in zip(grid, stack.mean(0), stack.min(0), stack.max(0))]
    return pd.DataFrame(rows, columns=["method", "position", "mean", "low", "high", "pairs"])
