"""Batched LLPF: K searches of one model advanced together in one process (docs/batched.md).

Each pair is an ordinary run (its own driver, run folder, seed, batch stream, checkpoints and
``--resume``), set up by ``search.prepare_search`` exactly as ``run_search`` sets up one run. What
they share is the training of every tick: the K models' parameters are stacked (stacked.py) and
trained together by one vmapped forward and one backward per SGD step, each model until its own stop
rule fires; a pair whose training has stopped finishes its tick and joins the next step with its next.
The rest of a tick (the move and the variance corrections, ``LLPF.before_training`` and
``after_training``) and everything the driver does per tick (evaluation, logging, points, checkpoints,
Stop) runs per pair on those stacked tensors' views. A pair that is done, stopped or failed leaves; the
others go on.

Models that cannot be stacked (BatchNorm's running statistics, a forward ``vmap`` refuses, methods that
are not LLPF walkers) run one after another in the same process, said once.
"""
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .config import SearchConfig
from .connect import LLPF
from .device import warn
from .driver import Driver, TickEvent
from .runfolder import Run, load_run
from .search import prepare_search
from .stacked import Job, StackedTrainer, stack_models, why_not_stackable, why_not_vmapped


@dataclass
class Pair:
    """One search of a batch: run (or resume) ``config`` from ``start`` to ``end`` in ``out``."""
    start: str | Path | None
    end: str | Path | None
    config: SearchConfig | None  # None: resume the run in ``out`` as stored
    out: str | Path


def run_batched(pairs: list[Pair], *, stop_event: threading.Event | None = None,
                on_tick: Callable[[TickEvent], None] | None = None,
                data_root: str | Path | None = None) -> list[Run | Exception]:
    """Run (or resume: a run folder that exists continues from its checkpoint) every pair, K together.

    Returns, per pair in order, its run folder read back, or the exception that failed it (recorded in
    its run.json as for a single run; one pair's failure does not stop the others). A KeyboardInterrupt
    marks every unfinished pair stopped and is raised."""
    results: list[Run | Exception | None] = [None] * len(pairs)
    ready: dict[int, tuple[Driver, tuple | None]] = {}
    for i, p in enumerate(pairs):
        try:
            prepared = prepare_search(p.start, p.end, p.config, p.out, on_tick=on_tick, stop_event=stop_event,
                                      resume=True, data_root=data_root)
        except Exception as e:  # noqa: BLE001  (a bad pair is its own failure)
            results[i] = e
            continue
        if isinstance(prepared, Run):
            results[i] = prepared
        else:
            ready[i] = prepared
    reason = why_not_batched([d for d, _ in ready.values()])
    if reason and len(ready) > 1:
        warn(f"running these {len(ready)} searches one after another, not batched: {reason}")
    if reason or len(ready) <= 1:
        for i, (driver, checkpoint) in ready.items():
            results[i] = _one(driver, checkpoint)
        return results
    _Lockstep(ready, results).run()
    return results


def why_not_batched(drivers: list[Driver]) -> str | None:
    """Why these runs cannot be batched (None: they can)."""
    if not drivers:
        return None
    methods = [d.method for d in drivers]
    if not all(isinstance(m, LLPF) for m in methods):
        return "only LLPF searches are batched"
    metas = {(d.meta.model, repr(sorted(d.meta.model_kwargs.items())), d.meta.dataset) for d in drivers}
    if len(metas) > 1:
        return "the pairs are of different models or datasets"
    sizes = {s.train.batch_size for m in methods for s in m.stages}
    if len(sizes) > 1:
        return f"the pairs train with different batch sizes ({sorted(sizes)})"
    if len({m.device for m in methods}) > 1 or len({m.cfg.dtype for m in methods}) > 1:
        return "the pairs run on different devices or dtypes"
    first = methods[0]
    reason = why_not_stackable(first.model) or why_not_vmapped(first.model, first.ctx.train_data.batch(
        torch.arange(2, device=first.device))[0])
    return f"{first.ctx.start.meta.model} cannot be stacked: {reason}" if reason else None


def _one(driver: Driver, checkpoint) -> Run | Exception:
    try:
        driver.run(checkpoint)
    except Exception as e:  # noqa: BLE001
        return e
    return load_run(driver.writer.path)


class _Lockstep:
    """The tick loop of batched runs: the driver's ``_run`` per pair, around shared stacked SGD steps."""

    def __init__(self, ready: dict[int, tuple[Driver, tuple | None]], results: list):
        self.drivers = {i: d for i, (d, _) in ready.items()}
        self.checkpoints = {i: c for i, (_, c) in ready.items()}
        self.results = results
        self.order = list(self.drivers)  # pair index -> position in the stack
        models = [self.drivers[i].method.model for i in self.order]
        stacked = stack_models(models)
        for i in self.order:  # the method's own handles on its tensors now point into the stack
            m = self.drivers[i].method
            m.xs = [p.data for p in m.params.values()]
            m.state = m.model.state_dict()
        first = self.drivers[self.order[0]].method
        self.trainer = StackedTrainer(first.model, stacked, first.cfg.dtype)
        self.live: list[int] = []
        self.prev: dict[int, dict | None] = {}  # per pair: its point before the tick, for the continuity check
        self.targets: dict = {}  # per pair: the tick's variance targets

    def run(self) -> None:
        try:
            for i in self.order:
                if self._guard(i, lambda d: d.begin_run(d.restore(self.checkpoints[i]))):
                    self.live.append(i)
                    self._next_tick(i)
                else:
                    self._finish(i)
            while self.trainer.busy:
                for position, training in self.trainer.step().items():
                    i = self.order[position]
                    ended = self._guard(i, lambda d: self._after(d, i, training))
                    if ended is not False:
                        self._finish(i)
                    else:
                        self._next_tick(i)
        except BaseException:
            for i in self.live:
                self.drivers[i].writer.update(status="stopped", error=None)
                self.drivers[i].writer.close()
            raise

    def _next_tick(self, i: int) -> None:
        """Pair ``i``'s next tick up to its training, which joins the stacked steps; or, when its run is
        done, its end. Pairs are not in tick lockstep: each starts its next tick as soon as its training
        ends, so the stacked steps stay as wide as the batch while any pair has ticks left."""
        done = self._guard(i, lambda d: d.method.done())
        if done is None:
            self._finish(i)
            return
        if done:
            self._guard(i, lambda d: d.end("finished"))
            self._finish(i)
            return

        def before(d: Driver) -> None:
            m = d.method
            self.prev[i] = d.continuity_start()
            self.targets[i] = m.before_training()
            self.trainer.start(self.order.index(i), Job(m.stream, m.stages[m.stage_index].train,
                                                        m.optimizer.scales))
        if not self._guard(i, before):
            self._finish(i)

    def _after(self, d: Driver, i: int, training) -> bool:
        """The rest of pair ``i``'s tick once its training ended; True when its run ended here."""
        if isinstance(training, Exception):
            raise training
        return d.record_unit(d.method.after_training(training, self.targets[i]), self.prev[i])

    def _guard(self, i: int, fn):
        """``fn(driver)``, with the driver's failure handling; None (and the pair failed) on an exception."""
        d = self.drivers[i]
        try:
            with d.failures():
                result = fn(d)
            return True if result is None else result
        except Exception as e:  # noqa: BLE001  (recorded in its run.json; the other pairs go on)
            self.results[i] = e
            return None

    def _finish(self, i: int) -> None:
        """Pair ``i`` leaves the batch (finished, stopped or failed); its parameters stop moving."""
        if i in self.live:
            self.live.remove(i)
        d = self.drivers[i]
        d.writer.close()
        if self.results[i] is None:
            self.results[i] = load_run(d.writer.path)
