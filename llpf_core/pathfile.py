"""path.csv, the one path format every run has: evaluated points by position along the path.

``position`` is 0 at A and 1 at the path's end, by cumulative L2 arc length over the saved points'
float tensors; run.json's ``path_length`` is that length itself. Methods parameterised by a curve
parameter (linear, bezier, rebasin, a plugin's curve) add ``t``, each point's parameter, after ``position``.
"""
import pandas as pd
import torch

from .safefile import write_atomic

PATH_COLUMNS = ["index", "tick", "position", "train_loss", "train_acc", "test_loss", "test_acc"]


def arc_positions(states: list[dict[str, torch.Tensor]]) -> tuple[list[float], float]:
    """Each state's cumulative L2 distance along the list, divided by the total; and the total."""
    steps = [0.0]
    for prev, cur in zip(states, states[1:]):
        sq = sum(float((cur[k].double() - prev[k].double()).square().sum()) for k, v in cur.items()
                 if v.is_floating_point() and not k.endswith(("running_mean", "running_var")))
        steps.append(steps[-1] + sq ** 0.5)
    total = steps[-1]
    return [s / total if total > 0 else 0.0 for s in steps], total


def write_path(writer, rows: list[dict], length: float) -> None:
    """Write path.csv (with the ``t`` column when the rows have it) and record ``path_length`` in run.json."""
    columns = PATH_COLUMNS[:3] + ["t"] + PATH_COLUMNS[3:] if any("t" in r for r in rows) else PATH_COLUMNS
    frame = pd.DataFrame(rows, columns=columns)
    write_atomic(writer.path / "path.csv", frame.to_csv(index=False).encode())
    writer.update(path_length=length)


def llpf_path(writer, metrics: pd.DataFrame, points, curve_t: list[float] | None = None) -> None:
    """path.csv of a run: its saved points, with the metrics evaluated at their ticks; ``curve_t``: the
    curve parameter of the point of each tick (a method that is not a walker numbers its points 0, 1, ...)."""
    from .modefile import load_mode
    states, ticks = [], []
    for tick, file in points:
        states.append(load_mode(file, "point file").model.state_dict())
        ticks.append(tick)
    positions, length = arc_positions(states)
    by_tick = metrics.set_index("tick") if len(metrics) else None
    rows = []
    for i, (tick, pos) in enumerate(zip(ticks, positions)):
        row = {"index": i, "tick": tick, "position": pos}
        if curve_t is not None:
            row["t"] = curve_t[tick]
        if by_tick is not None and tick in by_tick.index:
            r = by_tick.loc[tick]
            row.update({k: r[k] for k in ("train_loss", "train_acc", "test_loss", "test_acc")})
        rows.append(row)
    write_path(writer, rows, length)
