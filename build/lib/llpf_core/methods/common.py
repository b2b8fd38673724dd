"""What every path method shares: set-up, evaluation of the points and the run folder they fill."""
import threading
import time
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path

import torch

from ..config import SearchConfig
from ..data import load_dataset
from ..device import resolve_device
from ..errors import UserError
from ..evaluate import Evaluator
from ..modefile import Mode, ModeMeta, versions
from ..pathfile import arc_positions, write_path
from ..registry import build_model
from ..runfolder import Run, RunWriter, load_run


@dataclass
class Context:
    """The endpoints on the device and the data, handed to a method."""
    cfg: SearchConfig
    device: torch.device
    a: dict[str, torch.Tensor]
    b: dict[str, torch.Tensor]
    meta: ModeMeta
    train_data: object
    stop_event: threading.Event
    writer: RunWriter
    checkpoint: tuple[dict[str, torch.Tensor], dict] | None = None  # a resumed run's, for methods that train


@dataclass
class MethodPath:
    """A method's result: the states from A to the path's end, and what it cost."""
    states: list[dict[str, torch.Tensor]]
    sgd_steps: int = 0


def run_method(start: Mode, end: Mode, cfg: SearchConfig, out_dir: Path, endpoint_info: dict,
               data_root=None, stop_event: threading.Event | None = None, resume: bool = False) -> Run:
    """Build ``cfg.algorithm``'s path from ``start`` to ``end`` and write the run folder. ``resume``
    continues a stopped run in ``out_dir``: bezier from its checkpoint, the others from the start (they
    train nothing)."""
    method = import_module(f".{cfg.algorithm}", __package__)
    if hasattr(method, "check_supported"):
        method.check_supported(start.meta.model)  # before any work
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    train = load_dataset(start.meta.dataset, "train", data_root).to(device)
    test = load_dataset(start.meta.dataset, "test", data_root).to(device)
    scratch = build_model(start.meta.model, **start.meta.model_kwargs).to(device)
    evaluator = Evaluator(scratch, train, test, cfg.eval_samples, cfg.seed, cfg.bn_recal_batches,
                          cfg.train.batch_size)
    a = {k: v.to(device) for k, v in start.model.state_dict().items()}
    b = {k: v.to(device) for k, v in end.model.state_dict().items()}
    writer = RunWriter(out_dir)
    checkpoint = None
    if resume:
        writer.reopen()
        checkpoint = writer.load_checkpoint()
        writer.update(status="running", error=None, device_used=str(device))
    else:
        writer.create({"name": out_dir.name, "algorithm": cfg.algorithm, **endpoint_info, "config": cfg.to_dict(),
                       "device_used": str(device), "versions": versions()})
    try:
        n = max(cfg.baseline_points, 2)
        writer.write_baseline(evaluator.line(a, b, [i / (n - 1) for i in range(n)]))
        ctx = Context(cfg, device, a, b, start.meta, train, stop_event or threading.Event(), writer, checkpoint)
        result = method.build(ctx)
        if ctx.stop_event.is_set():
            writer.update(status="stopped", error=None)  # continue with --resume (bezier from its checkpoint)
            return load_run(out_dir)
        positions, length = arc_positions(result.states)
        rows = []
        for i, (state, pos) in enumerate(zip(result.states, positions)):
            row = {"index": i, "tick": i, "position": pos, **evaluator.evaluate(state)}
            rows.append(row)
            meta = ModeMeta(model=start.meta.model, model_kwargs=start.meta.model_kwargs,
                            dataset=start.meta.dataset, seed=cfg.seed, format="point/1",
                            metrics={k: row[k] for k in ("train_loss", "train_acc", "test_loss", "test_acc")},
                            extra={"llpf.tick": i, "llpf.run": out_dir.name})
            writer.save_point(i, state, meta.to_metadata())
        write_path(writer, rows, length)
        writer.update(status="finished", sgd_steps=result.sgd_steps, wall_s=round(time.perf_counter() - t0, 4))
        _summarise(writer)
    except BaseException as e:
        writer.update(status="stopped" if isinstance(e, KeyboardInterrupt) else "failed",
                      error=None if isinstance(e, KeyboardInterrupt) else
                      (str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"))
        raise
    finally:
        writer.close()
    return load_run(out_dir)


def _summarise(writer: RunWriter) -> None:
    from ..checks import run_summary
    summary = run_summary(load_run(writer.path))
    writer.update(summary={k: v for k, v in summary.items() if k not in ("name", "status", "algorithm")})


def float_keys(state: dict[str, torch.Tensor]) -> list[str]:
    return [k for k, v in state.items() if v.is_floating_point()]


def line_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], points: int) -> list[dict]:
    """``points`` states on the straight line from a to b; integer buffers follow b past the middle."""
    out = []
    for i in range(points):
        t = i / (points - 1)
        out.append({k: torch.lerp(a[k], b[k], t) if v.is_floating_point() else (b[k] if t > 0.5 else a[k])
                    for k, v in a.items()})
    return out
