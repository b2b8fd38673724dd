"""The layer-order editor's model: a table of layer groups, one search phase each. No Streamlit here.

A row is a group of layer patterns with its phase's ticks and steps. With ``cumulative`` on, phase k
moves the groups of rows 0..k (the paper's layer-wise schedule: add one group per phase); otherwise
phase k moves row k's group only.
"""
from __future__ import annotations

import pandas as pd

from llpf_core import Phase, SearchConfig, UserError, follow_data_flow, match_layers

COLUMNS = ["layers", "ticks", "step_a", "step_f", "step_c"]


def _patterns(cell: str) -> list[str]:
    return [p.strip() for p in str(cell).split(",") if p.strip()]


def from_preset(cfg: SearchConfig) -> pd.DataFrame:
    """One row per phase of the preset, as it is (not cumulative)."""
    starts = [p.start_tick for p in cfg.phases] + [cfg.ticks]
    rows = [{"layers": ", ".join(p.layers), "ticks": starts[i + 1] - p.start_tick, "step_a": p.step_a,
             "step_f": p.step_f, "step_c": p.step_c} for i, p in enumerate(cfg.phases)]
    return pd.DataFrame(rows, columns=COLUMNS)


def from_data_flow(model, cfg: SearchConfig) -> pd.DataFrame:
    """One row per module that owns parameters, in the order a forward pass runs them (meant to be
    used cumulatively); the preset's ticks are shared evenly and its first phase's steps reused."""
    params = set(dict(model.named_parameters()))
    modules = [group[0].rsplit(".", 1)[0] if "." in group[0] else group[0]
               for group in follow_data_flow(model) if params.intersection(group)]
    first = cfg.phases[0]
    ticks = max(cfg.ticks // max(len(modules), 1), 1)
    rows = [{"layers": m, "ticks": ticks, "step_a": first.step_a, "step_f": first.step_f, "step_c": first.step_c}
            for m in modules]
    return pd.DataFrame(rows, columns=COLUMNS)


HEURISTIC_PHASES = 4  # at most this many groups: each phase adds the next quarter of the layers


def from_barriers(result, cfg: SearchConfig, groups: int = HEURISTIC_PHASES) -> pd.DataFrame:
    """A heuristic start, to be edited: the layers ranked by their layer-wise barrier (the mean of A's and B's
    side; ties in data-flow order), lowest first, cut into up to ``groups`` groups of consecutive ranks, each
    group's layers listed in data-flow order (meant to be used cumulatively: the low-barrier layers move first,
    the rest join phase by phase). The preset's ticks are shared evenly and its first phase's steps reused."""
    barrier = result.summary.set_index("layer")[["train_barrier_A", "train_barrier_B"]].mean(axis=1)
    layers = result.layers
    ranked = sorted(layers, key=lambda n: (barrier[n], layers.index(n)))
    k = max(min(groups, len(ranked)), 1)
    chunks = [ranked[i * len(ranked) // k:(i + 1) * len(ranked) // k] for i in range(k)]
    first = cfg.phases[0]
    ticks = max(cfg.ticks // k, 1)
    rows = [{"layers": ", ".join(sorted(chunk, key=layers.index)), "ticks": ticks, "step_a": first.step_a,
             "step_f": first.step_f, "step_c": first.step_c} for chunk in chunks]
    return pd.DataFrame(rows, columns=COLUMNS)


def move(table: pd.DataFrame, rows: list[int], delta: int) -> pd.DataFrame:
    """Move the selected rows up (delta=-1) or down (+1) by one place, as a block."""
    order = list(range(len(table)))
    for i in sorted(rows, reverse=delta > 0):
        j = i + delta
        if 0 <= j < len(order) and order[j] not in rows:
            order[i], order[j] = order[j], order[i]
    return table.iloc[order].reset_index(drop=True)


def merge(table: pd.DataFrame, rows: list[int]) -> pd.DataFrame:
    """Join the selected rows into the first of them: their patterns together, their ticks summed."""
    if len(rows) < 2:
        return table
    rows = sorted(rows)
    first = table.iloc[rows[0]].to_dict()
    first["layers"] = ", ".join(dict.fromkeys(p for i in rows for p in _patterns(table.iloc[i]["layers"])))
    first["ticks"] = int(sum(int(table.iloc[i]["ticks"]) for i in rows))
    kept = [table.iloc[i].to_dict() if i != rows[0] else first for i in range(len(table)) if i not in rows[1:]]
    return pd.DataFrame(kept, columns=COLUMNS)


def split(table: pd.DataFrame, row: int, names: list[str]) -> pd.DataFrame:
    """Split one row into one row per pattern; a single pattern splits into its direct sub-modules
    (``layer1`` into ``layer1.0`` and ``layer1.1``). Ticks are shared out."""
    item = table.iloc[row].to_dict()
    parts = _patterns(item["layers"])
    if len(parts) == 1:
        parts = _children(parts[0], names) or parts
    if len(parts) == 1:
        return table
    ticks = max(int(item["ticks"]) // len(parts), 1)
    pieces = [{**item, "layers": p, "ticks": ticks} for p in parts]
    out = [r for i in range(len(table)) for r in (pieces if i == row else [table.iloc[i].to_dict()])]
    return pd.DataFrame(out, columns=COLUMNS)


def _children(pattern: str, names: list[str]) -> list[str]:
    try:
        matched = match_layers([pattern], names, "layers")
    except UserError:
        return []
    depth = 0 if pattern == "*" else pattern.count(".") + 1
    children = [".".join(n.split(".")[:depth + 1]) for n in matched if n.count(".") > depth]
    return list(dict.fromkeys(children))


def problems(table: pd.DataFrame, names: list[str]) -> list[str]:
    """Everything wrong with the table, one message per row; empty when it can be run."""
    out = []
    if not len(table):
        return ["add at least one group"]
    for i, row in enumerate(table.to_dict("records"), start=1):
        patterns = _patterns(row["layers"])
        if not patterns:
            out.append(f"group {i}: no layer patterns")
            continue
        for pattern in patterns:  # each bad pattern named, not only the first
            try:
                match_layers([pattern], names, f"group {i}")
            except UserError as e:
                out.append(str(e))
        if pd.isna(row["ticks"]) or int(row["ticks"]) < 1:
            out.append(f"group {i}: ticks must be at least 1")
        steps = [row[k] for k in ("step_a", "step_f", "step_c")]
        if any(pd.isna(s) or float(s) < 0 for s in steps) or not (float(row["step_a"]) or float(row["step_f"])):
            out.append(f"group {i}: step_a or step_f must be positive, and no step negative")
    return out


def phases(table: pd.DataFrame, cumulative: bool) -> tuple[list[Phase], int]:
    """The search phases the table stands for, and the total ticks."""
    out, start, seen = [], 0, []
    for row in table.to_dict("records"):
        patterns = _patterns(row["layers"])
        seen = list(dict.fromkeys(seen + patterns)) if cumulative else patterns
        out.append(Phase(start, list(seen), float(row["step_a"]), float(row["step_f"]), float(row["step_c"])))
        start += int(row["ticks"])
    return out, start
