"""The method contract: what a path method supplies, and what the run driver hands it.

A method is only its algorithm (docs/writing-a-method.md). It sets itself up from a ``MethodContext``
(the endpoints, the data and the config on the device), then the driver (driver.py) calls ``advance``
until ``done``: one unit of work each time (an LLPF tick, a chunk of SGD steps). It saves and restores
its own state for checkpoints (``state_dict``, ``load_state_dict``), and gives the path: a walker
(LLPF) stands on a new path point after every unit (``current``); any other method returns its points
once done (``path``). Everything else (the run folder, evaluation, points, path.csv, the baseline,
continuity, checkpoints' cadence and RNG, Pause, Stop, errors, the summary) is the driver's.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch

    from ..config import SearchConfig
    from ..data import ImageData
    from ..evaluate import Evaluator
    from ..modefile import Mode
    from ..train import BatchStream

UNIT_S = 1.0  # a unit of SGD steps ends after about this long, so progress shows while a method trains


@dataclass
class MethodContext:
    """The endpoints, the data and the config on the device, and the driver's services."""
    cfg: SearchConfig
    settings: object  # the method's own settings dataclass (None for LLPF: its settings are cfg's own)
    device: torch.device
    start: Mode
    end: Mode | None  # None: to the origin
    train_data: ImageData
    test_data: ImageData
    evaluator: Evaluator
    generator: torch.Generator  # seeded with cfg.seed; the batch stream draws from it
    folder: Path  # the run folder (for a method's own extra files)
    record: Callable[..., None]  # record(**fields): add fields to run.json
    mark_point: Callable[[], None]  # a walker: save the point it stands at now (a phase boundary)
    interrupted: Callable[[], bool]  # Stop or Pause was asked: end the unit of work early
    thresholds: dict[str, float] | None = None  # LLPF: the loss thresholds a resumed run used
    stream: BatchStream | None = field(default=None, init=False)

    def batches(self, batch_size: int, channels_last: bool = False) -> BatchStream:
        """The run's batch stream (drawn with ``generator``); the driver checkpoints and restores it."""
        from ..train import BatchStream
        self.stream = BatchStream(self.train_data, batch_size, self.generator, channels_last=channels_last)
        return self.stream

    @cached_property
    def a(self) -> dict[str, torch.Tensor]:
        """The start mode's state on the device."""
        return {k: v.to(self.device) for k, v in self.start.model.state_dict().items()}

    @cached_property
    def b(self) -> dict[str, torch.Tensor]:
        """The end mode's state on the device."""
        return {k: v.to(self.device) for k, v in self.end.model.state_dict().items()}


@dataclass
class Step:
    """What one unit of work did. A walker's ``row`` holds the new point's metrics.csv columns (tick,
    stage, phase, iterations, train_loss_rolling, train_acc_rolling, distance, distance_rel); any other
    method's the progress to show (iterations, train_loss_rolling)."""
    row: dict
    force_eval: bool = False  # evaluate this point whatever eval_every says (a stage's last tick)
    stopped_early: str | None = None  # why the method ends here before its planned end


class Method(ABC):
    """Base class of a path method (see the module docstring); override what the method needs."""
    walks = False  # True: every unit of work ends on a new path point

    def __init__(self, ctx: MethodContext):
        self.ctx = ctx
        self.progress = 0  # units of work done: ticks, SGD steps

    @property
    def total(self) -> int:
        """Planned units of work (an upper bound where a method can end early)."""
        return 0

    @classmethod
    def check(cls, start: Mode, end: Mode | None, cfg: SearchConfig) -> None:
        """Refuse endpoints the method cannot connect (a ``UserError``), before any work or data loading."""

    def begin(self) -> Step | None:
        """A new run, before the first unit (a resumed one calls ``load_state_dict`` instead); a walker
        returns the row of the point it starts on (tick 0)."""

    def advance(self) -> Step:
        """One unit of work (an LLPF tick, a chunk of SGD steps); a method whose path needs no work (the
        straight line: ``total`` 0) never advances."""
        raise TypeError(f"{type(self).__name__} has work to do (total {self.total}) and must define advance()")

    def done(self) -> bool:
        return self.progress >= self.total

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        """The method's own state for a checkpoint: tensors, and JSON-able info."""
        return {}, {}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], info: dict) -> None:
        """Continue from a checkpoint written by ``state_dict`` (``info`` also holds ``tick``: progress)."""
        self.progress = int(info["tick"])

    def current(self) -> dict[str, torch.Tensor] | None:
        """A walker: the state at the point it stands on now."""
        return None

    def path(self) -> list[dict[str, torch.Tensor]]:
        """Not a walker: the states along the path from the start to its end, once done."""
        raise TypeError(f"{type(self).__name__} is not a walker (walks = False), so it must define path()")

    def curve_parameters(self) -> list[float] | None:
        """Not a walker: the curve parameter t of each point ``path`` returns (path.csv's ``t``), for a
        method parameterised by one (None: the method has none)."""
        return None

    def layer_rows(self, tick: int) -> list[dict]:
        """layers.csv rows for an evaluated point (a walker's)."""
        return []

    def baseline(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None:
        """The ends of the straight-line baseline, asked before the first unit (None: no baseline)."""
        return (self.ctx.a, self.ctx.b) if self.ctx.end is not None else None

    def sgd_steps(self) -> int | None:
        """SGD steps spent, for the summary (None: metrics.csv's iterations tell)."""
        return None


class TrainedCurve(Method):
    """A method that trains for ``total`` SGD steps and then returns its path (bezier, polychain).

    A subclass sets itself up in ``__init__``, with ``trained`` (the tensors it trains, by name) and
    ``optimizer``, and supplies ``train_step`` (one step; returns the batch loss) and ``path``. Its
    checkpoints hold ``trained`` and the optimizer's momentum (the driver adds the batches and RNG)."""
    trained: dict[str, torch.Tensor]
    optimizer: torch.optim.Optimizer

    @abstractmethod
    def train_step(self) -> torch.Tensor:
        """One SGD step on ``trained``; returns the batch loss."""

    def advance(self) -> Step:
        """SGD steps up to the next checkpoint, for about ``UNIT_S``, or until Stop or Pause."""
        import torch

        from ..train import TrainingDiverged
        every, t0, losses = self.ctx.cfg.checkpoint_every, time.monotonic(), []
        while self.progress < self.total and not self.ctx.interrupted():
            losses.append(self.train_step().detach())
            self.progress += 1
            if self.progress % every == 0 or time.monotonic() - t0 >= UNIT_S:
                break
        loss = float(torch.stack(losses).mean()) if losses else None
        if loss is not None and not torch.isfinite(torch.tensor(loss)):
            raise TrainingDiverged(f"training diverged: the loss became {loss} before step {self.progress}; "
                                   f"lower the learning rate (the method's lr setting)")
        return Step({"iterations": len(losses), "train_loss_rolling": loss})

    def sgd_steps(self) -> int:
        return self.progress

    def _optimized(self) -> list[torch.Tensor]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def state_dict(self) -> tuple[dict, dict]:
        tensors = {f"trained.{k}": v.detach() for k, v in self.trained.items()}
        for i, p in enumerate(self._optimized()):
            buf = self.optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                tensors[f"momentum.{i}"] = buf
        return tensors, {"step": self.progress, "steps": self.total}

    def load_state_dict(self, tensors: dict, info: dict) -> None:
        import torch
        super().load_state_dict(tensors, info)
        with torch.no_grad():
            for k, v in self.trained.items():
                v.copy_(tensors[f"trained.{k}"])
        for i, p in enumerate(self._optimized()):
            if f"momentum.{i}" in tensors:
                self.optimizer.state[p]["momentum_buffer"] = tensors[f"momentum.{i}"].to(p.device).clone()
        self.ctx.record(resumed_from_step=self.progress)


def float_keys(state: dict[str, torch.Tensor]) -> list[str]:
    return [k for k, v in state.items() if v.is_floating_point()]


def curve_ts(points: int) -> list[float]:
    """``points`` equally spaced curve parameters from 0 to 1."""
    return [i / (points - 1) for i in range(points)]


def line_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], points: int) -> list[dict]:
    """``points`` states on the straight line from a to b; integer buffers follow b past the middle."""
    import torch
    out = []
    for i in range(points):
        t = i / (points - 1)
        out.append({k: torch.lerp(a[k], b[k], t) if v.is_floating_point() else (b[k] if t > 0.5 else a[k])
                    for k, v in a.items()})
    return out
