"""The run driver: everything about a run that is not its method's algorithm (methods/base.py).

It puts the data and the evaluator on the device and sets the method up, then writes the run folder:
the run's status and its one error mapping (out of memory, disk full, a diverged loss: one line),
progress callbacks (``TickEvent``), Pause and Stop (between units of work, and inside them through
``MethodContext.interrupted``), checkpoints at ``checkpoint_every`` (the method's state, the random
state and the batch stream), evaluation rows in metrics.csv for every method, layers.csv, the
continuity check, the point files, path.csv, the straight-line baseline and the summary.
"""
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .checks import run_summary
from .config import SearchConfig, method_settings
from .data import load_dataset
from .device import apply_cuda_settings, out_of_memory, resolve_device, warn
from .errors import UserError
from .evaluate import Evaluator, fixed_subset
from .methods.base import MethodContext, Step
from .methods.registry import get_method
from .modefile import Mode, ModeMeta
from .pathfile import llpf_path
from .readers import check_schema, checkpoint_errors, set_cuda_rng, set_torch_rng
from .registry import build_model
from .runfolder import CHECKPOINT_FILE, RunWriter, load_run
from .safefile import os_error

OOM_HINT = ("start a new run with smaller settings, e.g. --set train.batch_size=N (also eval_samples, "
            "continuity.samples); --resume keeps the stored config")
RUNNING_STATS = ("running_mean", "running_var")


@dataclass
class TickEvent:
    """Progress after one unit of work. For a walker (LLPF) the rows are exactly those written to the run
    folder; for any other method ``tick`` counts its units (SGD steps) and ``metrics`` its progress."""
    run: str
    tick: int
    total_ticks: int  # planned (an upper bound when a method can end early)
    stage: str
    phase: str
    metrics: dict
    layers: list[dict] = field(default_factory=list)
    continuity: list[dict] = field(default_factory=list)
    status: str = "running"  # "paused" once a pause has taken effect


def read_checkpoint(folder: Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    """A run folder's checkpoint (tensors, info), or None before the first one. Every checkpoint read
    goes through here."""
    return RunWriter(folder).load_checkpoint()


def check_device_type(checkpoint_info: dict, run_info: dict, device: str) -> None:
    """A checkpoint continues only on the device type that wrote it: the batch stream's generator
    state (and the CUDA random state) belongs to one device type."""
    written = checkpoint_info.get("device_type") or torch.device(run_info["device_used"]).type
    now = resolve_device(device)
    if now.type != written:
        raise UserError(f"--resume: this run's checkpoint was written on {written} and cannot continue on "
                        f"{now} (device {device!r}): its random state belongs to {written}; resume with "
                        f"--device {written} on a machine that has one, or start a new run")


class Driver:
    """One run of one method, from set-up to the summary."""

    def __init__(self, out_dir: Path, cfg: SearchConfig, start: Mode, end: Mode | None, data_root,
                 on_tick: Callable[[TickEvent], None] | None, stop_event: threading.Event | None,
                 pause_event: threading.Event | None, thresholds: dict[str, float] | None):
        self.writer, self.cfg, self.meta, self.on_tick = RunWriter(out_dir), cfg, start.meta, on_tick
        self.name = cfg.algorithm
        self.stop_event = stop_event or threading.Event()
        self.pause_event = pause_event or threading.Event()
        self.pending: dict | None = {}  # run.json fields a method records before the folder exists
        device = self.device = resolve_device(cfg.device)
        apply_cuda_settings(device, cfg.tf32, cfg.cudnn_benchmark)
        if device.type != "cuda" and (cfg.tf32 or cfg.cudnn_benchmark):
            warn(f"tf32 and cudnn_benchmark apply on CUDA only; the search runs on {device} without them")
        train = load_dataset(start.meta.dataset, "train", data_root).to(device)
        test = load_dataset(start.meta.dataset, "test", data_root).to(device)
        fits = train.model_kwargs()
        for key in ("num_classes", "in_channels"):
            if key in start.meta.model_kwargs and start.meta.model_kwargs[key] != fits[key]:
                raise UserError(f"the start mode's {key} is {start.meta.model_kwargs[key]} but {start.meta.dataset} "
                                f"has {fits[key]}; use a mode trained on {start.meta.dataset}")
        scratch = build_model(start.meta.model, **start.meta.model_kwargs).to(device)
        if cfg.channels_last:  # evaluation in the training's layout: LeNet-5's CPU pooling is 2x faster in it
            scratch.to(memory_format=torch.channels_last)
        self.evaluator = Evaluator(scratch, train, test, cfg.eval_samples, cfg.seed, cfg.bn_recal_batches,
                                   cfg.train.batch_size)
        self.continuity_idx = fixed_subset(len(train), cfg.continuity.samples, cfg.seed + 4, device)
        self.ctx = MethodContext(cfg, method_settings(cfg), device, start, end, train, test, self.evaluator,
                                 torch.Generator(device).manual_seed(cfg.seed), self.writer.path, self._record,
                                 lambda: self._save_point(), self._interrupted, thresholds)
        self.method = get_method(cfg.algorithm).build(self.ctx)
        self.t0, self.clock_offset = time.perf_counter(), 0.0
        self.last_saved, self.last_row = -1, {}

    def _interrupted(self) -> bool:
        return self.stop_event.is_set() or self.pause_event.is_set()

    def _record(self, **fields) -> None:
        if self.pending is None:
            self.writer.update(**fields)
        else:
            self.pending.update(fields)

    def _elapsed(self) -> float:
        return self.clock_offset + time.perf_counter() - self.t0

    def open(self, new_info: dict | None) -> None:
        """Create the run folder (``new_info``: run.json's fields), or reopen the one being resumed."""
        if new_info is None:
            self.writer.reopen()
            if self.pending:
                self.writer.update(**self.pending)
        else:
            self.writer.create({**new_info, **self.pending, "device_used": str(self.device)})
        self.pending = None

    # --- the run ---------------------------------------------------------------------------------

    def run(self, checkpoint: tuple[dict[str, torch.Tensor], dict] | None) -> None:
        """From the start, or from ``checkpoint``; the run's status says how it ended. A failure is recorded
        in run.json and raised (out of memory and a failed write as a one-line ``UserError``)."""
        resumed = self.restore(checkpoint)
        try:
            with self.failures():
                self._run(resumed)
        finally:
            self.writer.close()

    def restore(self, checkpoint: tuple[dict[str, torch.Tensor], dict] | None) -> bool:
        """Continue from ``checkpoint`` (None: a new run; returns whether it resumes). The state is restored in
        memory and every table and kept point checked before anything is written, so a damaged checkpoint or
        table changes nothing on disk."""
        if checkpoint is None:
            return False
        try:
            with checkpoint_errors(self.writer.path / CHECKPOINT_FILE):
                self._restore(*checkpoint)
            self._keep_restored_rows()
        except BaseException:
            self.writer.close()
            raise
        return True

    @contextmanager
    def failures(self):
        """Record a failure inside the block in run.json and raise it (out of memory and a failed write as
        a one-line ``UserError``); a KeyboardInterrupt marks the run stopped."""
        try:
            yield
        except BaseException as e:
            error = out_of_memory(e, f"searching on {self.device}: {OOM_HINT}")
            if error is None and isinstance(e, OSError):
                error = os_error(e, "write", e.filename or self.writer.path)
            try:
                if isinstance(e, KeyboardInterrupt):
                    self.writer.update(status="stopped", error=None)
                else:
                    shown = error or e
                    self.writer.update(status="failed", error=str(shown) if isinstance(shown, UserError) else
                                       f"{type(e).__name__}: {e}")
            except UserError:
                pass  # run.json cannot be written either (disk full, no permission): the original error counts
            if error is not None:
                raise error from None
            raise

    def _run(self, resumed: bool) -> None:
        m = self.method
        self.begin_run(resumed)
        while not m.done():
            prev = self.continuity_start()
            if self.record_unit(m.advance(), prev):
                return
        self.end("finished")

    def begin_run(self, resumed: bool) -> None:
        """Tick 0 (logged, with the baseline and a first checkpoint) of a new run; a resumed one (``restore``)
        goes on from its checkpoint."""
        m = self.method
        self.t0 = time.perf_counter()
        if not resumed:
            self.writer.truncate_after(-1)  # a run killed before its first checkpoint starts over
            torch.manual_seed(self.cfg.seed)  # dropout and other global randomness (decision 7)
            first = m.begin()
            if m.walks:
                self._log(first, None)
            self._baseline()
            self._checkpoint()
        self.writer.update(status="running", error=None, device_used=str(self.device))

    def record_unit(self, step: Step, prev: dict | None) -> bool:
        """Log a unit of work the method has done, then stop, pause or checkpoint as due. True when the run
        has ended here (stopped, or the method stopped early)."""
        m = self.method
        if m.walks:
            self._log(step, prev, force_eval=step.force_eval or self.stop_event.is_set())
        else:
            self._progress(step)
        if self.stop_event.is_set():  # also when set by on_tick
            self.end("stopped")
            return True
        if step.stopped_early:
            self.end("finished", stopped_early=step.stopped_early)
            return True
        if self.pause_event.is_set() and not m.done():
            if not self._pause():
                return True
        elif m.progress % self.cfg.checkpoint_every == 0:
            self._checkpoint()
        return False

    def _pause(self) -> bool:
        """Checkpoint, mark the run paused and wait. False when a stop came while paused."""
        if self.method.walks:
            self._save_point()
        self._checkpoint()
        self.writer.update(status="paused")
        self._event(self.last_row, status="paused")
        self.clock_offset += time.perf_counter() - self.t0  # paused time is not search time
        self.t0 = time.perf_counter()
        while self.pause_event.is_set() and not self.stop_event.wait(0.1):
            pass
        if self.stop_event.is_set():
            self.writer.update(status="stopped")
            return False
        self.t0 = time.perf_counter()
        self.writer.update(status="running")
        return True

    def end(self, status: str, **fields) -> None:
        """The run's last point and checkpoint; a finished run's path, path.csv and summary."""
        m = self.method
        if m.walks:
            self._save_point()
        self._checkpoint()
        if status == "finished" and not m.walks:
            self._evaluate_path(m.path())
        steps = m.sgd_steps()
        self.writer.update(status=status, **fields, **({} if steps is None else {"sgd_steps": steps}))
        if status == "finished":
            run = load_run(self.writer.path)
            llpf_path(self.writer, run.metrics, run.points(), None if m.walks else m.curve_parameters())
            summary = run_summary(load_run(self.writer.path))
            self.writer.update(summary={k: v for k, v in summary.items() if k not in ("name", "status", "algorithm")})

    # --- rows, points and events ----------------------------------------------------------------------

    def continuity_start(self) -> dict[str, torch.Tensor] | None:
        """A walker's point before the next unit, when the continuity check is due at the next tick."""
        c, m = self.cfg.continuity, self.method
        if not m.walks or c.points < 2 or (m.progress + 1) % c.every:
            return None
        return {k: v.clone() for k, v in m.current().items()}

    def _log(self, step: Step, prev: dict | None, force_eval: bool = False) -> None:
        """A walker's new point: its metrics row (evaluated every eval_every ticks), layers and continuity."""
        row = {**step.row, "wall_s": round(self._elapsed(), 4)}
        tick, state = row["tick"], self.method.current()
        layers, continuity = [], []
        if force_eval or tick % self.cfg.eval_every == 0:
            row.update(self.evaluator.evaluate(state))
            layers = self.method.layer_rows(tick)
        if prev is not None:
            alphas = [i / self.cfg.continuity.points for i in range(1, self.cfg.continuity.points)]
            continuity = [{"tick": tick, **r} for r in self.evaluator.line(prev, state, alphas, self.continuity_idx)]
            row["continuity_max_loss"] = max(r["loss"] for r in continuity)
        self.last_row = row
        self.writer.append("metrics", [row])
        self.writer.append("layers", layers)
        self.writer.append("continuity", continuity)
        if tick == 0 or tick % self.cfg.save_every == 0:
            self._save_point(row)
        self._event(row, layers, continuity)

    def _progress(self, step: Step) -> None:
        """Progress of a method that trains before it has a path (no row is written yet)."""
        self.last_row = {**step.row, "wall_s": round(self._elapsed(), 4)}
        self._event(self.last_row)

    def _event(self, row: dict, layers: list | None = None, continuity: list | None = None,
               status: str = "running") -> None:
        if self.on_tick:
            m = self.method
            self.on_tick(TickEvent(self.writer.path.name, m.progress, m.total, row.get("stage", self.name),
                                   row.get("phase", f"{self.name}:0"), row, layers or [], continuity or [], status))

    def _evaluate_path(self, states: list[dict[str, torch.Tensor]]) -> None:
        """The finished path of a method that is not a walker: every point evaluated, logged and saved,
        with its distance to the path's end."""
        end = states[-1]
        keys = [k for k, v in end.items() if v.is_floating_point() and not k.endswith(RUNNING_STATS)]

        def distance(state: dict) -> float:
            return sum(float((state[k].double() - end[k].double()).square().sum()) for k in keys) ** 0.5

        first = distance(states[0])
        for i, state in enumerate(states):
            d = distance(state)
            row = {"tick": i, "stage": self.name, "phase": f"{self.name}:0", "iterations": 0, "distance": d,
                   "distance_rel": d / first if first > 0 else 0.0, "wall_s": round(self._elapsed(), 4),
                   **self.evaluator.evaluate(state)}
            self.writer.append("metrics", [row])
            self._save_point(row, tick=i, state=state)

    def _baseline(self) -> None:
        """The straight line from the start mode to the end of the method's path, evaluated."""
        n, line = self.cfg.baseline_points, self.method.baseline()
        if n and line is not None:
            self.writer.write_baseline(self.evaluator.line(*line, [i / (n - 1) for i in range(n)]))

    def _save_point(self, row: dict | None = None, tick: int | None = None, state: dict | None = None) -> None:
        tick = self.method.progress if tick is None else tick
        if tick == self.last_saved:
            return
        self.last_saved = tick
        row = row or (self.last_row if self.last_row.get("tick") == tick else None)
        meta = ModeMeta(model=self.meta.model, model_kwargs=self.meta.model_kwargs, dataset=self.meta.dataset,
                        seed=self.cfg.seed, train_config={}, format="point/1",
                        metrics={k: row[k] for k in ("train_loss", "train_acc", "test_loss", "test_acc")
                                 if row and row.get(k) is not None},
                        extra={"llpf.tick": tick, "llpf.run": self.writer.path.name})
        self.writer.save_point(tick, self.method.current() if state is None else state, meta.to_metadata())

    # --- checkpoint and resume -----------------------------------------------------------------------

    def _checkpoint(self) -> None:
        tensors, info = self.method.state_dict()
        tensors, info = dict(tensors), dict(info)
        stream = self.ctx.stream
        if stream is not None:
            state = stream.state_dict()
            tensors.update({"stream/perm": state["perm"], "stream/rng": state["rng"]})
            info["stream_pos"] = state["pos"]
        tensors["torch_rng"] = torch.get_rng_state()
        if self.device.type == "cuda":
            tensors["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        info.update(tick=self.method.progress, total=self.method.total, algorithm=self.name,
                    device_type=self.device.type, wall_s=self._elapsed())
        self.writer.save_checkpoint(tensors, info)

    def _restore(self, tensors: dict[str, torch.Tensor], info: dict) -> None:
        path = self.writer.path / CHECKPOINT_FILE
        check_schema(info, {"tick": int, "wall_s": float, "stream_pos?": int}, path, where="llpf.checkpoint")
        m = self.method
        m.load_state_dict(tensors, info)
        if self.ctx.stream is not None and "stream/perm" in tensors:
            self.ctx.stream.load_state_dict({"perm": tensors["stream/perm"], "pos": info["stream_pos"],
                                             "rng": tensors["stream/rng"]})
        set_torch_rng(tensors["torch_rng"], path, "torch_rng")
        if "cuda_rng" in tensors and self.device.type == "cuda":
            set_cuda_rng(tensors["cuda_rng"], self.device, path, "cuda_rng")
        self.clock_offset = float(info["wall_s"])

    def _keep_restored_rows(self) -> None:
        m = self.method
        # A method that is not a walker writes its rows and points once trained: a resume redoes them all.
        self.writer.truncate_after(m.progress if m.walks else -1)
        if m.walks and (self.writer.path / "points" / f"{m.progress:06d}.safetensors").exists():
            self.last_saved = m.progress
