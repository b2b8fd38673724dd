"""Checks on modes and runs: independence of two modes, a run's summary, and recomputed checks."""
from dataclasses import dataclass

import pandas as pd

from .data import load_dataset
from .errors import UserError
from .evaluate import Evaluator, fixed_subset
from .flow import norm_layer_names
from .geometry import cosine
from .modefile import Mode, load_mode
from .registry import build_model
from .runfolder import Run

INDEPENDENCE_THRESHOLD = 0.2  # mean |cos| above this: the modes share a common origin


@dataclass
class Independence:
    table: pd.DataFrame  # layer, numel, cosine
    mean_abs_cosine: float
    independent: bool

    @property
    def verdict(self) -> str:
        if self.independent:
            return (f"independent: mean |cos| over weight layers is {self.mean_abs_cosine:.3f} "
                    f"(<= {INDEPENDENCE_THRESHOLD})")
        return (f"NOT independent: mean |cos| over weight layers is {self.mean_abs_cosine:.3f} "
                f"(> {INDEPENDENCE_THRESHOLD}); were both trained from the same initialisation or seed?")


def independence(a: Mode, b: Mode) -> Independence:
    """Per-layer cosine similarity of two modes' weight tensors (matrices and kernels).

    Biases and norm-layer parameters are left out: they are similar in any two trained networks.
    """
    if a.meta.model != b.meta.model or a.meta.model_kwargs != b.meta.model_kwargs:
        raise UserError(f"the modes have different architectures ({a.meta.model} vs {b.meta.model})")
    norms = norm_layer_names(a.model)
    sb = dict(b.model.named_parameters())
    rows = [{"layer": n, "numel": p.numel(), "cosine": cosine(p, sb[n]).item()}
            for n, p in a.model.named_parameters() if p.dim() >= 2 and n not in norms]
    table = pd.DataFrame(rows, columns=["layer", "numel", "cosine"])
    mean_abs = float(table["cosine"].abs().mean()) if len(table) else 0.0
    return Independence(table, mean_abs, mean_abs <= INDEPENDENCE_THRESHOLD)


def run_summary(run: Run) -> dict:
    """The headline numbers of a run, computed from its CSV files."""
    m, b, p = run.metrics, run.baseline, run.path_table
    evaluated = m["train_loss"].dropna() if len(m) else p["train_loss"].dropna()
    out = {"name": run.name, "status": run.status, "algorithm": run.info["algorithm"],
           "ticks": int(m["tick"].max()) if len(m) else 0,
           "barrier": float(b["train_loss"].max()) if len(b) else None,
           "path_max_train_loss": float(evaluated.max()) if len(evaluated) else None,
           "path_max_continuity_loss": float(m["continuity_max_loss"].max())
           if len(m) and m["continuity_max_loss"].notna().any() else None,
           "final_distance_rel": float(m["distance_rel"].iloc[-1]) if len(m) else None,
           "wall_s": float(m["wall_s"].iloc[-1]) if len(m) else run.info.get("wall_s"),
           "path_length": run.info.get("path_length"),
           "sgd_steps": int(m["iterations"].sum()) if len(m) else run.info.get("sgd_steps")}
    ends = (m if len(m) else p).dropna(subset=["test_loss"])
    if len(ends):
        out.update(start_test_loss=float(ends["test_loss"].iloc[0]), start_test_acc=float(ends["test_acc"].iloc[0]),
                   end_test_loss=float(ends["test_loss"].iloc[-1]), end_test_acc=float(ends["test_acc"].iloc[-1]))
    if out["barrier"] and out["path_max_train_loss"] is not None:
        out["ratio"] = out["path_max_train_loss"] / out["barrier"]
    return out


def recheck(run: Run, baseline: bool, continuity: bool, data_root=None, points: int = 11,
            samples: int = 1000) -> dict[str, pd.DataFrame]:
    """Recompute the straight-line baseline (start to end mode) and the continuity between
    consecutive saved points, from the files in the run folder."""
    cfg = run.config
    info = run.info
    saved = run.points()
    if not saved:
        raise UserError(f"run {run.name} has no saved points")
    first = load_mode(saved[0][1], "point file")
    kwargs = first.meta.model_kwargs
    train = load_dataset(first.meta.dataset, "train", data_root)
    test = load_dataset(first.meta.dataset, "test", data_root)
    evaluator = Evaluator(build_model(first.meta.model, **kwargs), train, test, cfg.eval_samples,
                          cfg.seed, cfg.bn_recal_batches, cfg.train.batch_size)
    out = {}
    if baseline:
        if not info.get("end"):
            raise UserError("this run has no end mode (M2O to the origin), so there is no baseline")
        end = load_mode(info["end"]["path"], "end mode file")
        start = load_mode(info["start"]["path"], "start mode file")
        out["baseline"] = pd.DataFrame(evaluator.line(start.model.state_dict(), end.model.state_dict(),
                                                      [i / (points - 1) for i in range(points)]))
    if continuity:
        idx = fixed_subset(len(train), samples, cfg.seed + 4, train.device)
        alphas = [i / 10 for i in range(1, 10)]
        rows = []
        prev = first.model.state_dict()
        for tick, path in saved[1:]:
            cur = load_mode(path, "point file").model.state_dict()
            for r in evaluator.line(prev, cur, alphas, idx):
                rows.append({"tick": tick, **r})
            prev = cur
        out["continuity"] = pd.DataFrame(rows, columns=["tick", "alpha", "loss", "acc"])
    return out
