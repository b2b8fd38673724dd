"""The landscape plane: the loss over the plane through the start mode A, the end mode B and one saved
path point P (Garipov et al. 2018, Fig. 1), and every saved point projected onto it.

    θ(x, y) = A + x·(B − A) + y·‖B − A‖·v,   v = the unit part of (P − A) orthogonal to (B − A)

The coordinates are the model's parameters (``named_parameters``); buffers come from A, and BatchNorm
running statistics are recomputed at every grid point (the evaluator's recalibration). A path in a
million dimensions is not in a plane: each projected point carries ``residual_rel`` = ‖θ − its
projection‖ / ‖B − A‖.

A plane lives in ``RUN/landscape/plane-<TICK:06d>/``: plane.json (written first) and grid.csv (rows in a
fixed order, appended in whole lines), so an interrupted computation keeps its rows and a rerun with the
same settings continues after them.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from .errors import UserError
from .readers import damaged, read_csv, read_json
from .runfolder import Run
from .safefile import os_error, read_tensors, write_atomic, write_json

GRID_MIN, GRID_MAX = 3, 201
GRID_COLUMNS = ["x", "y", "train_loss", "train_acc", "test_loss", "test_acc"]
PLANE_FORMAT = "plane/1"
SAMPLES_PER_PASS = 4096  # grid points x samples per stacked forward pass: bounds the activations' memory


@dataclass
class Plane:
    """The plane's geometry over the flattened parameters (float64 for the projections)."""
    names: list[str]  # parameter names, in the order of the flat vectors
    shapes: list[torch.Size]
    a: torch.Tensor  # (D,) start mode
    u: torch.Tensor  # (D,) B - A
    v: torch.Tensor  # (D,) unit, orthogonal to u
    scale: float  # ‖B − A‖

    def coords(self, theta: torch.Tensor) -> tuple[float, float, float]:
        """(x, y, residual_rel) of a flat parameter vector."""
        d = theta.double() - self.a.double()
        x = float(d @ self.u.double()) / self.scale ** 2
        y = float(d @ self.v.double()) / self.scale
        rest = d - x * self.u.double() - y * self.scale * self.v.double()
        return x, y, float(rest.norm()) / self.scale

    def points(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """(G, D) float32 parameter vectors at plane coordinates (xs, ys), each of shape (G,)."""
        return (self.a[None] + xs[:, None].to(self.a) * self.u[None]
                + (ys[:, None].to(self.a) * self.scale) * self.v[None])


def flat_params(state: dict[str, torch.Tensor], names: list[str], shapes: list[torch.Size],
                path: str | Path) -> torch.Tensor:
    """The parameters ``names`` of ``state`` (read from ``path``) as one vector; a file without them, or
    with other shapes, is one ``UserError``."""
    bad = [n for n, shape in zip(names, shapes) if n not in state or state[n].shape != shape]
    if bad:
        raise UserError(f"{path} does not hold this run's model (parameter {bad[0]} is missing or of another "
                        f"shape); it was replaced or is damaged: restore it, or choose another run")
    return torch.cat([state[n].detach().float().flatten() for n in names])


def line_distance(a: torch.Tensor, u: torch.Tensor, theta: torch.Tensor) -> float:
    """Distance of ``theta`` from the straight line through a along u."""
    d = theta.double() - a.double()
    u = u.double()
    return float((d - (d @ u) / (u @ u) * u).norm())


def make_plane(names: list[str], shapes: list[torch.Size], a: torch.Tensor, b: torch.Tensor,
               p: torch.Tensor) -> Plane:
    u = b - a
    scale = float(u.double().norm())
    if scale == 0:
        raise UserError("the start and end modes are identical, so they span no plane")
    d = (p - a).double()
    w = d - (d @ u.double()) / (u.double() @ u.double()) * u.double()
    if float(w.norm()) <= 1e-9 * scale:
        raise UserError("this point lies on the straight line between the modes, so it spans no plane; "
                        "choose another with --point")
    return Plane(names, shapes, a, u, (w / w.norm()).float(), scale)


# --- the run's files ------------------------------------------------------------------------------

def _endpoint_path(run: Run, key: str) -> str:
    end = run.info.get(key)
    if not end or not end.get("path"):
        raise UserError(f"run {run.name} has no end mode (M2O to the origin), so there is no plane through "
                        f"A, B and a path point; choose an M2M run")
    return end["path"]


def _endpoint_state(run: Run, key: str) -> dict[str, torch.Tensor]:
    return read_tensors(_endpoint_path(run, key), f"{key} mode file")[0]


def _flat_endpoint(run: Run, key: str, names: list[str], shapes: list[torch.Size]) -> torch.Tensor:
    return flat_params(_endpoint_state(run, key), names, shapes, _endpoint_path(run, key))


def _flat_file(path: Path, names: list[str], shapes: list[torch.Size]) -> torch.Tensor:
    return flat_params(read_tensors(path, "point file")[0], names, shapes, path)


def _param_names(run: Run) -> tuple[list[str], list[torch.Size]]:
    """The model's parameter names and shapes, from a model built on the meta device (no memory)."""
    from .modecheck import meta_model
    meta = run.info["start"]["meta"]
    model = meta_model(meta["model"], meta["model_kwargs"], f"{run.path / 'run.json'}")
    params = list(model.named_parameters())
    return [n for n, _ in params], [p.shape for _, p in params]


def plane_dir(run: Run, tick: int) -> Path:
    return run.path / "landscape" / f"plane-{tick:06d}"


def default_point(run: Run) -> int:
    """The tick of the saved point farthest from the straight line between the modes."""
    names, shapes = _param_names(run)
    a = _flat_endpoint(run, "start", names, shapes)
    u = _flat_endpoint(run, "end", names, shapes) - a
    saved = run.points()
    if not saved:
        raise UserError(f"run {run.name} has no saved points")
    dist = {t: line_distance(a, u, _flat_file(f, names, shapes)) for t, f in saved}
    return max(dist, key=dist.get)


def run_plane(run: Run, tick: int) -> Plane:
    names, shapes = _param_names(run)
    a, b = (_flat_endpoint(run, k, names, shapes) for k in ("start", "end"))
    return make_plane(names, shapes, a, b, _flat_file(run.point(tick).path, names, shapes))


def project_run(plane: Plane, run: Run) -> list[dict]:
    """``{tick, x, y, residual_rel}`` of every saved point of ``run`` (this run, or another on the pair)."""
    rows = []
    for tick, f in run.points():
        x, y, r = plane.coords(_flat_file(f, plane.names, plane.shapes))
        rows.append({"tick": tick, "x": x, "y": y, "residual_rel": r})
    return rows


def same_pair_runs(run: Run) -> list[Run]:
    """Other runs in the same folder whose start and end mode files have the same sha256 as this one's."""
    from .runfolder import load_run
    key = _pair(run.info)
    others = []
    for folder in sorted(run.path.parent.iterdir()):
        if folder == run.path or not (folder / "run.json").is_file():
            continue
        try:
            other = load_run(folder)
        except UserError:
            continue
        if key is not None and _pair(other.info) == key:
            others.append(other)
    return others


def _pair(info: dict) -> tuple[str, str] | None:
    start, end = info.get("start") or {}, info.get("end") or {}
    if not start.get("sha256") or not end.get("sha256"):
        return None
    return start["sha256"], end["sha256"]


# --- the grid -------------------------------------------------------------------------------------

def grid_axes(projected: list[dict], p: tuple[float, float], margin: float) -> tuple[list[float], list[float]]:
    """x and y ranges covering A (0, 0), B (1, 0), P and the projected points, widened by ``margin``
    times the larger extent on every side."""
    xs = [0.0, 1.0, p[0], *[q["x"] for q in projected]]
    ys = [0.0, p[1], *[q["y"] for q in projected]]
    span = max(max(xs) - min(xs), max(ys) - min(ys))
    return ([min(xs) - margin * span, max(xs) + margin * span],
            [min(ys) - margin * span, max(ys) + margin * span])


def grid_coords(x_range: list[float], y_range: list[float], n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The n x n grid's coordinates, row after row (y outer, x inner): grid.csv's order."""
    xs = torch.linspace(x_range[0], x_range[1], n, dtype=torch.float64)
    ys = torch.linspace(y_range[0], y_range[1], n, dtype=torch.float64)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return gx.flatten(), gy.flatten()


class PlaneEvaluator:
    """Train and test loss and accuracy at many plane points, on the run's own evaluation samples.

    Fully connected models without BatchNorm evaluate a chunk of grid points as one ``vmap`` of
    ``functional_call`` over their stacked parameters per evaluation batch. Convolutional models (vmap
    turns their convolutions into grouped ones: LeNet-5 2.3x slower on a CPU, bench/landscape_speed.py)
    and BatchNorm models (their running statistics are recomputed at each point) load each point into
    the evaluator instead.
    """

    def __init__(self, run: Run, plane: Plane, samples: int | None = None, device: str = "cpu",
                 data_root=None, per_pass: int | None = None):
        from .data import load_dataset
        from .device import resolve_device
        from .evaluate import Evaluator, stackable
        cfg = run.config
        self.device = resolve_device(device)
        meta = run.info["start"]["meta"]
        from .registry import build_model
        _param_names(run)  # the model fits the budget (it is built on the meta device first)
        model = build_model(meta["model"], **meta["model_kwargs"]).to(self.device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        train = load_dataset(meta["dataset"], "train", data_root).to(self.device)
        test = load_dataset(meta["dataset"], "test", data_root).to(self.device)
        self.samples = cfg.eval_samples if samples is None else samples
        self.evaluator = Evaluator(model, train, test, self.samples, cfg.seed, cfg.bn_recal_batches,
                                   cfg.train.batch_size)
        start = {k: v.to(self.device) for k, v in _endpoint_state(run, "start").items()}
        self.evaluator.load(start)  # buffers (and integer ones) from A
        self.model = model.eval()
        self.plane = Plane(plane.names, plane.shapes, plane.a.to(self.device), plane.u.to(self.device),
                           plane.v.to(self.device), plane.scale)
        self.state = start
        self.sizes = [s.numel() for s in plane.shapes]
        self.stacked = stackable(model)
        batch = max(len(x) for x, _ in self.evaluator._batches(train, self.evaluator.train_idx))
        self.per_pass = per_pass or max(1, SAMPLES_PER_PASS // batch)

    @property
    def sample_counts(self) -> dict[str, int]:
        return {"train": len(self.evaluator.train_idx), "test": len(self.evaluator.test_idx)}

    @torch.no_grad()
    def evaluate(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """(G, 4): train_loss, train_acc, test_loss, test_acc at the plane points (xs, ys)."""
        thetas = self.plane.points(xs.to(self.device), ys.to(self.device))
        ev = self.evaluator
        if not self.stacked:
            out = []
            for theta in thetas:
                ev.load({**self.state, **self._params(theta[None], squeeze=True)})
                out.append(torch.cat([ev.loss_acc(ev.train, ev.train_idx), ev.loss_acc(ev.test, ev.test_idx)]))
            return torch.stack(out).cpu()
        out = [torch.cat([self._stacked(chunk, ev.train, ev.train_idx), self._stacked(chunk, ev.test, ev.test_idx)],
                         dim=1) for chunk in thetas.split(self.per_pass)]
        return torch.cat(out).cpu()

    def _params(self, thetas: torch.Tensor, squeeze: bool = False) -> dict[str, torch.Tensor]:
        g = thetas.shape[0]
        parts = thetas.split(self.sizes, dim=1)
        if squeeze:
            return {n: t.reshape(s) for n, t, s in zip(self.plane.names, parts, self.plane.shapes)}
        return {n: t.reshape(g, *s) for n, t, s in zip(self.plane.names, parts, self.plane.shapes)}

    def _stacked(self, thetas: torch.Tensor, data, idx: torch.Tensor) -> torch.Tensor:
        """(G, 2) mean cross-entropy and accuracy of G stacked parameter vectors on ``data[idx]``."""
        return self.evaluator.stacked(self._params(thetas), data, idx)


@dataclass
class Landscape:
    """A computed (or partly computed) plane read back: ``load_landscape(run, tick)``."""
    path: Path
    info: dict  # plane.json
    grid: pd.DataFrame  # grid.csv's complete rows

    @property
    def complete(self) -> bool:
        return len(self.grid) == self.info["grid"] ** 2


def validate_grid(grid: int, margin: float, samples: int | None) -> None:
    if not GRID_MIN <= grid <= GRID_MAX:
        raise UserError(f"--grid must be between {GRID_MIN} and {GRID_MAX} (points per side), got {grid}")
    if not 0 <= margin <= 5:
        raise UserError(f"--margin must be between 0 and 5 (a fraction of the plane's extent), got {margin}")
    if samples is not None and samples < 0:
        raise UserError(f"--samples must be >= 0 (0 = the whole split), got {samples}")


def compute_landscape(run: Run, point: int | None = None, grid: int = 21, margin: float = 0.2,
                      samples: int | None = None, device: str = "cpu", data_root=None,
                      on_progress: Callable[[int, int], None] | None = None,
                      stop_event: threading.Event | None = None) -> Landscape:
    """Evaluate the plane through A, B and the saved point at ``point`` (default: the farthest from the
    straight line) on a ``grid`` x ``grid`` grid, into ``RUN/landscape/plane-<TICK>/``.

    ``samples`` defaults to the run's ``eval_samples`` (0 = whole split) with the run's seed, so a grid
    point at A or P gives the loss the run logged there. Rows already in grid.csv with the same settings
    are kept; ``on_progress(done, total)`` follows each chunk; ``stop_event`` stops after a chunk.
    """
    validate_grid(grid, margin, samples)
    if point is None:
        point = default_point(run)
    plane = run_plane(run, point)
    projected = project_run(plane, run)
    p = next((q["x"], q["y"]) for q in projected if q["tick"] == point)
    x_range, y_range = grid_axes(projected, p, margin)
    engine = PlaneEvaluator(run, plane, samples, device, data_root)
    info = {"format": PLANE_FORMAT, "point_tick": point, "scale": plane.scale, "p": list(p),
            "x": x_range, "y": y_range, "grid": grid, "margin": margin,
            "samples": {"eval_samples": engine.samples, "seed": run.config.seed, **engine.sample_counts},
            "parameters": int(plane.a.numel()), "projected": projected}
    folder = plane_dir(run, point)
    done = _rows_to_keep(folder, info)
    if done == 0:
        write_json(folder / "plane.json", info)
        write_atomic(folder / "grid.csv", (",".join(GRID_COLUMNS) + "\n").encode())
    gx, gy = grid_coords(x_range, y_range, grid)
    total = grid * grid
    if on_progress:
        on_progress(done, total)
    path = folder / "grid.csv"
    chunk = max(engine.per_pass, 1)
    try:
        with open(path, "a", newline="") as f:
            while done < total and not (stop_event and stop_event.is_set()):
                end = min(done + chunk, total)
                values = engine.evaluate(gx[done:end], gy[done:end]).tolist()
                f.write("".join(f"{x!r},{y!r},{','.join(repr(v) for v in row)}\n"
                                for x, y, row in zip(gx[done:end].tolist(), gy[done:end].tolist(), values)))
                f.flush()
                done = end
                if on_progress:
                    on_progress(done, total)
    except OSError as e:
        raise os_error(e, "append to", path) from None
    return load_landscape(run, point)


def _rows_to_keep(folder: Path, info: dict) -> int:
    """Complete rows of an earlier computation with the same settings (a torn last line is cut off);
    0 when there is none, its settings differ or its files are damaged (the computation starts over)."""
    try:
        old = read_json(folder / "plane.json")
        grid = read_csv(folder / "grid.csv", GRID_COLUMNS)
        text = (folder / "grid.csv").read_text()
    except (UserError, OSError, UnicodeDecodeError):
        return 0
    same = all(old.get(k) == info[k] for k in ("format", "point_tick", "grid", "margin", "samples", "x", "y"))
    lines = text.splitlines(keepends=True)
    if not same or not lines or grid.isna().any().any():
        return 0
    rows = [ln for ln in lines[1:] if ln.endswith("\n")]
    if len(rows) != len(lines) - 1:
        write_atomic(folder / "grid.csv", "".join(lines[:1] + rows).encode())
    return len(rows)


def list_landscapes(run: Run) -> list[int]:
    """Ticks of the planes computed (or started) for this run."""
    folder = run.path / "landscape"
    if not folder.is_dir():
        return []
    return sorted(int(d.name.split("-")[1]) for d in folder.glob("plane-[0-9]*")
                  if d.name.split("-")[1].isdigit() and (d / "plane.json").is_file())


_PAIR = [float]
PLANE_SCHEMA = {"format": str, "point_tick": int, "scale": float, "p": _PAIR, "x": _PAIR, "y": _PAIR, "grid": int,
                "margin": float, "samples": dict, "parameters": int,
                "projected": [{"tick": int, "x": float, "y": float, "residual_rel": float}]}


def load_landscape(run: Run, tick: int) -> Landscape:
    folder = plane_dir(run, tick)
    if not (folder / "plane.json").exists():
        raise UserError(f"run {run.name} has no landscape plane at tick {tick}; compute it with "
                        f"`python -m llpf_core landscape {run.path} --point {tick}`")
    fix = f"compute it again with `python -m llpf_core landscape {run.path} --point {tick}`"
    info = read_json(folder / "plane.json", PLANE_SCHEMA, fix=fix)
    if not (len(info["p"]) == len(info["x"]) == len(info["y"]) == 2 and GRID_MIN <= info["grid"] <= GRID_MAX):
        raise damaged(folder / "plane.json", "its point, axes or grid size are out of shape", fix)
    grid = read_csv(folder / "grid.csv", GRID_COLUMNS, required=tuple(GRID_COLUMNS[:2]), fix=fix)
    return Landscape(folder, info, grid)


def project_pair_runs(run: Run, tick: int, others: list[Run] | None = None) -> dict[str, list[dict]]:
    """Other runs on this run's pair (``others``, default ``same_pair_runs(run)``), by run name: their saved
    points projected onto the plane through A, B and this run's point at ``tick`` (``project_run``'s rows)."""
    plane = run_plane(run, tick)
    return {other.name: project_run(plane, other) for other in (same_pair_runs(run) if others is None else others)}
