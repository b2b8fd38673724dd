"""Layer-wise connectivity (Adilova et al., ICLR 2024): which layers carry the barrier between two modes.

A *layer* is a module that owns parameters; its weight, bias and BatchNorm tensors move together. Each
row of ``layerwise.csv`` interpolates one group of layers between A and B at one ``alpha`` while every
other tensor comes from the *base* mode (A or B):

    θ = base,   θ[group] = (1 − alpha)·A[group] + alpha·B[group]

The groups are every single layer, the first k and the last k layers in data-flow order (2 <= k < n,
names joined with ``+``; k = 1 is the single layer, k = n the whole model, ``all``). Every state is
evaluated as path points are (eval mode, the fixed samples, BatchNorm statistics recomputed), each
distinct state once. The barrier of a group from one side is

    max over alpha of  loss(alpha) − (1 − alpha)·loss(A) − alpha·loss(B),

written per group to ``summary.csv``, next to Adilova et al.'s layer-wise barrier (``_ends``): the same
against the line between the row's own ends (alpha 0 and 1), which, from A's side, is A with the group from
B. ``layerwise.json`` (written last) holds the settings and the layer order.
"""
from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from .errors import UserError
from .modefile import Mode, load_mode
from .runfolder import Run
from .safefile import file_sha256, os_error, write_atomic, write_json

FORMAT = "layerwise/1"
DEFAULT_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
COLUMNS = ["layer", "base", "alpha", "train_loss", "train_acc", "test_loss", "test_acc"]
SUMMARY_COLUMNS = ["layer", "kind", "size", "train_barrier_A", "train_barrier_B", "test_barrier_A",
                   "test_barrier_B", "train_barrier_A_ends", "train_barrier_B_ends", "test_barrier_A_ends",
                   "test_barrier_B_ends"]
ALL = "all"
SAMPLES_PER_PASS = 4096  # states x samples per stacked forward pass: bounds the activations' memory
METRICS = ("train_loss", "train_acc", "test_loss", "test_acc")


@dataclass
class Group:
    """Layers interpolated together: ``kind`` is layer, first (the first ``size`` layers), last or all."""
    name: str
    kind: str
    members: list[int]  # indices into the layer order

    @property
    def size(self) -> int:
        return len(self.members)


@dataclass
class Layerwise:
    """A computed analysis read back: ``load_layerwise(dir)``."""
    path: Path
    info: dict  # layerwise.json
    table: pd.DataFrame  # layerwise.csv
    summary: pd.DataFrame  # summary.csv

    @property
    def layers(self) -> list[str]:
        """The single layers, in data-flow order."""
        return list(self.info["layers"])

    def excess(self, base: str, split: str = "train") -> pd.DataFrame:
        """loss − the line between A's and B's losses, by single layer (rows, data-flow order) and alpha
        (columns), from one side (``base`` A or B): the heatmap whose row maxima are the barriers."""
        t = self.table[(self.table["base"] == base) & self.table["layer"].isin(self.layers)]
        a, b = self.info["A"][f"{split}_loss"], self.info["B"][f"{split}_loss"]
        excess = t[f"{split}_loss"] - (1 - t["alpha"]) * a - t["alpha"] * b
        return t.assign(excess=excess).pivot(index="layer", columns="alpha", values="excess").reindex(self.layers)

    def cumulative(self, kind: str) -> pd.DataFrame:
        """The summary's rows of the first-k (``kind="first"``) or last-k curve, k = 1 .. n, with their k (an
        analysis restricted to some layers lacks the cumulative groups: only k = 1 and n may be there)."""
        rows = self.summary.set_index("layer").reindex(cumulative_names(self.layers, kind))
        return rows.reset_index().assign(k=range(1, len(rows) + 1)).dropna(subset=["kind"])


def parameter_layers(model: nn.Module) -> list[tuple[str, list[str]]]:
    """(module name, its state-dict tensors) of every module owning parameters, in data-flow order."""
    from .flow import follow_data_flow
    params = set(dict(model.named_parameters()))
    return [(group[0].rsplit(".", 1)[0] if "." in group[0] else group[0], group)
            for group in follow_data_flow(model) if params.intersection(group)]


def make_groups(layers: list[str], chosen: list[str] | None = None) -> list[Group]:
    """Single layers (only ``chosen`` ones when given; then no cumulative groups), first-k and last-k, all."""
    n = len(layers)
    singles = [Group(name, "layer", [i]) for i, name in enumerate(layers) if chosen is None or name in chosen]
    cumulative = [] if chosen is not None else [
        *(Group("+".join(layers[:k]), "first", list(range(k))) for k in range(2, n)),
        *(Group("+".join(layers[n - k:]), "last", list(range(n - k, n))) for k in range(2, n))]
    return [*singles, *cumulative, Group(ALL, "all", list(range(n)))]


def cumulative_names(layers: list[str], kind: str) -> list[str]:
    """The rows of the first-k (``kind="first"``) or last-k curve, k = 1 .. n, as named in layerwise.csv."""
    n = len(layers)
    parts = [layers[:k] if kind == "first" else layers[n - k:] for k in range(1, n + 1)]
    return [ALL if len(p) == n else "+".join(p) for p in parts]


def check_layer_names(names: Sequence[str], layers: list[str]) -> list[str]:
    unknown = [n for n in names if n not in layers]
    if unknown:
        raise UserError(f"--layers: no layer named {', '.join(repr(n) for n in unknown)} in this model; its layers "
                        f"are {', '.join(layers[:12])}{' ...' if len(layers) > 12 else ''}")
    return list(dict.fromkeys(names))


def check_alphas(alphas: Sequence[float]) -> list[float]:
    values = sorted({float(a) for a in alphas})
    if not values or any(not 0.0 <= a <= 1.0 for a in values):
        raise UserError(f"--alphas must be numbers between 0 and 1 (e.g. 0,0.25,0.5,0.75,1), got "
                        f"{','.join(str(a) for a in alphas) or 'none'}")
    return values


def parse_alphas(text: str) -> list[float]:
    try:
        return check_alphas([float(a) for a in text.split(",") if a.strip()])
    except ValueError:
        raise UserError(f"--alphas must be comma-separated numbers between 0 and 1, got {text!r}") from None


class MixEvaluator:
    """Evaluates mixes of A and B, each given as a coefficient toward B per layer plus one for the rest."""

    def __init__(self, start: Mode, end: Mode, layers: list[tuple[str, list[str]]], cfg, samples: int | None,
                 device: str, data_root) -> None:
        from .data import load_dataset
        from .device import resolve_device
        from .evaluate import Evaluator, stackable
        from .registry import build_model
        self.device = resolve_device(device)
        meta = start.meta
        model = build_model(meta.model, **meta.model_kwargs).to(self.device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        train = load_dataset(meta.dataset, "train", data_root).to(self.device)
        test = load_dataset(meta.dataset, "test", data_root).to(self.device)
        self.samples = cfg.eval_samples if samples is None else samples
        self.evaluator = Evaluator(model, train, test, self.samples, cfg.seed, cfg.bn_recal_batches,
                                   cfg.train.batch_size)
        self.a = {k: v.to(self.device) for k, v in start.model.state_dict().items()}
        self.b = {k: v.to(self.device) for k, v in end.model.state_dict().items()}
        self.layer_tensors = [names for _, names in layers]
        owned = {n for names in self.layer_tensors for n in names}
        self.rest = [k for k in self.a if k not in owned]
        self.param_names = [n for n, _ in model.named_parameters()]
        self.batched = stackable(model)
        batch = max(len(x) for x, _ in self.evaluator._batches(train, self.evaluator.train_idx))
        self.per_pass = max(1, SAMPLES_PER_PASS // batch) if self.batched else 1

    def state(self, mix: tuple[float, ...]) -> dict[str, torch.Tensor]:
        """The state with each layer's tensors (and then the rest) at its coefficient between A and B.
        Integer tensors (BatchNorm's batch counter) cannot be interpolated: from A below 0.5, from B above."""
        out = {}
        for coef, names in zip(mix, [*self.layer_tensors, self.rest]):
            for k in names:
                a, b = self.a[k], self.b[k]
                out[k] = torch.lerp(a, b, coef) if a.is_floating_point() else (b if coef >= 0.5 else a)
        return out

    @torch.no_grad()
    def evaluate(self, mixes: list[tuple[float, ...]]) -> list[list[float]]:
        """train_loss, train_acc, test_loss, test_acc of each mix."""
        ev = self.evaluator
        if not self.batched:
            out = []
            for mix in mixes:
                ev.load(self.state(mix))
                out.append(torch.cat([ev.loss_acc(ev.train, ev.train_idx), ev.loss_acc(ev.test, ev.test_idx)]))
            return torch.stack(out).tolist()
        states = [self.state(mix) for mix in mixes]
        ev.load(states[0])  # buffers (a stackable model has no BatchNorm statistics to recompute)
        params = {n: torch.stack([s[n] for s in states]) for n in self.param_names}
        return torch.cat([ev.stacked(params, ev.train, ev.train_idx), ev.stacked(params, ev.test, ev.test_idx)],
                         dim=1).tolist()


def _endpoints(start: Mode | str | Path | Run, end: Mode | str | Path | None, out_dir, cfg):
    """The two modes, the evaluation settings and the output folder; a run gives all three."""
    from . import check_compatible
    from .presets import default_preset, generic_m2m, load_preset
    if isinstance(start, Run):
        run = start
        if end is not None:
            raise UserError("give a run, or a start and an end mode, not both")
        if not (run.info.get("end") or {}).get("path"):
            raise UserError(f"run {run.name} has no end mode (M2O to the origin); layer-wise connectivity needs two "
                            f"modes")
        start, end = run.info["start"]["path"], run.info["end"]["path"]
        cfg = cfg or run.config
        out_dir = out_dir or run.path / "layerwise"
    if end is None or out_dir is None:
        raise UserError("give a start mode, an end mode and an output folder (or a run)")
    a = start if isinstance(start, Mode) else load_mode(start, "start mode file")
    b = end if isinstance(end, Mode) else load_mode(end, "end mode file")
    if cfg is None:
        preset = default_preset(a.meta.model, a.meta.dataset, "m2m")
        cfg = load_preset(preset) if preset else generic_m2m()
    check_compatible(a, b, replace(cfg, algorithm="m2m"))
    return a, b, cfg, Path(out_dir)


def compute_layerwise(start: Mode | str | Path | Run, end: Mode | str | Path | None = None,
                      out_dir: str | Path | None = None, alphas: Sequence[float] = DEFAULT_ALPHAS,
                      layers: Sequence[str] | None = None, config=None, samples: int | None = None,
                      device: str = "cpu", data_root=None,
                      on_progress: Callable[[int, int], None] | None = None,
                      stop_event: threading.Event | None = None) -> Layerwise | None:
    """Compute the layer-wise table of modes ``start`` (A) and ``end`` (B) into ``out_dir``.

    ``start`` may be a run instead (``end`` None): its endpoints and evaluation settings, into
    ``RUN/layerwise`` unless ``out_dir`` is given. Otherwise the evaluation settings (``eval_samples``,
    ``seed``, BatchNorm recalibration) come from ``config``, by default the model's default M2M preset.
    ``samples`` overrides ``eval_samples`` (0 = whole split). ``layers`` restricts the single-layer rows to
    those module names (then no cumulative groups). Bad input raises a ``UserError`` before anything is
    written; ``on_progress(done, total)`` follows the evaluations; a set ``stop_event`` returns None after
    the current batch of evaluations, leaving the folder as it was.
    """
    alphas = check_alphas(alphas)
    if samples is not None and samples < 0:
        raise UserError(f"--samples must be >= 0 (0 = the whole split), got {samples}")
    a, b, cfg, out_dir = _endpoints(start, end, out_dir, config)
    order = parameter_layers(a.model)
    names = [n for n, _ in order]
    chosen = None if layers is None else check_layer_names(layers, names)
    groups = make_groups(names, chosen)
    t0 = time.perf_counter()
    engine = MixEvaluator(a, b, order, cfg, samples, device, data_root)

    n = len(names)
    rows = []  # (group, base, alpha, mix): the mix is each layer's coefficient, then the rest's if there is a rest
    for group in groups:
        for base in ("A", "B"):
            rest = 0.0 if base == "A" else 1.0
            for alpha in alphas:
                mix = tuple(alpha if i in group.members else rest for i in range(n)) + ((rest,) if engine.rest else ())
                rows.append((group, base, alpha, mix))
    ends = [(0.0,) * (n + bool(engine.rest)), (1.0,) * (n + bool(engine.rest))]
    distinct = list(dict.fromkeys([*ends, *(r[3] for r in rows)]))  # A and B first: every summary needs them
    results: dict[tuple, list[float]] = {}
    if on_progress:
        on_progress(0, len(distinct))
    for i in range(0, len(distinct), engine.per_pass):
        if stop_event is not None and stop_event.is_set():
            return None
        chunk = distinct[i:i + engine.per_pass]
        results.update(zip(chunk, engine.evaluate(chunk)))
        if on_progress:
            on_progress(len(results), len(distinct))

    table = pd.DataFrame([{"layer": g.name, "base": base, "alpha": alpha, **dict(zip(METRICS, results[mix]))}
                          for g, base, alpha, mix in rows], columns=COLUMNS)
    mode_a, mode_b = (dict(zip(METRICS, results[e])) for e in ends)
    summary = summarize(table, groups, mode_a, mode_b)
    info = {"format": FORMAT, "model": a.meta.model, "model_kwargs": a.meta.model_kwargs, "dataset": a.meta.dataset,
            "start": {"path": str(Path(a.path).absolute()) if a.path else None,
                      "sha256": file_sha256(a.path) if a.path else None, "seed": a.meta.seed},
            "end": {"path": str(Path(b.path).absolute()) if b.path else None,
                    "sha256": file_sha256(b.path) if b.path else None, "seed": b.meta.seed},
            "alphas": alphas, "layers": names, "tensors": {name: t for name, t in order},
            "groups": [{"name": g.name, "kind": g.kind, "size": g.size} for g in groups],
            "samples": {"eval_samples": engine.samples, "seed": cfg.seed,
                        "train": len(engine.evaluator.train_idx), "test": len(engine.evaluator.test_idx)},
            "A": mode_a, "B": mode_b, "evaluations": len(distinct), "batched": engine.batched,
            "device": str(engine.device), "wall_s": round(time.perf_counter() - t0, 3)}
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise os_error(e, "create", out_dir) from None
    write_atomic(out_dir / "layerwise.csv", table.to_csv(index=False).encode())
    write_atomic(out_dir / "summary.csv", summary.to_csv(index=False).encode())
    write_json(out_dir / "layerwise.json", info)
    return load_layerwise(out_dir)


def summarize(table: pd.DataFrame, groups: list[Group], mode_a: dict, mode_b: dict) -> pd.DataFrame:
    """Each group's barrier from each side, on the train and the test split: against the line between A's and
    B's losses, and (``_ends``) against the line between this row's own ends, its alpha 0 and 1 (empty
    unless both are among the alphas)."""
    out = []
    for g in groups:
        row = {"layer": g.name, "kind": g.kind, "size": g.size}
        rows = table[table["layer"] == g.name]
        for split in ("train", "test"):
            for base in ("A", "B"):
                side = rows[rows["base"] == base].sort_values("alpha")
                loss, alpha = side[f"{split}_loss"], side["alpha"]
                line = (1 - alpha) * mode_a[f"{split}_loss"] + alpha * mode_b[f"{split}_loss"]
                row[f"{split}_barrier_{base}"] = float((loss - line).max())
                if alpha.iloc[0] == 0 and alpha.iloc[-1] == 1:
                    own = (1 - alpha) * loss.iloc[0] + alpha * loss.iloc[-1]
                    row[f"{split}_barrier_{base}_ends"] = float((loss - own).max())
        out.append(row)
    return pd.DataFrame(out, columns=SUMMARY_COLUMNS)


def load_layerwise(path: str | Path) -> Layerwise:
    """Read a folder written by ``compute_layerwise`` (a run's ``RUN/layerwise``, or any ``--out``)."""
    path = Path(path)
    if (path / "run.json").is_file() and not (path / "layerwise.json").is_file():
        path = path / "layerwise"
    files = {name: path / name for name in ("layerwise.json", "layerwise.csv", "summary.csv")}
    try:
        info = json.loads(files["layerwise.json"].read_text())
        table = pd.read_csv(io.StringIO(files["layerwise.csv"].read_text()))
        summary = pd.read_csv(io.StringIO(files["summary.csv"].read_text()))
    except FileNotFoundError as e:
        raise UserError(f"{path} has no layer-wise analysis ({Path(e.filename).name} missing); compute it with "
                        f"`python -m llpf_core layerwise`") from None
    except OSError as e:
        raise os_error(e, "read", e.filename or path) from None
    except (json.JSONDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise UserError(f"{path}: the layer-wise files are damaged ({e}); compute them again") from None
    if info.get("format") != FORMAT or list(table.columns) != COLUMNS:
        raise UserError(f"{path}: not a {FORMAT} analysis (format {info.get('format')!r}); compute it again")
    return Layerwise(path, info, table, summary)
