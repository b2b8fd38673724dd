"""K models of one architecture trained together: their parameters stacked along a new first dimension,
one forward pass over the stack (``stackedforward.stacked_forward``: the model's own batched form, or
``torch.func.functional_call`` under ``torch.func.vmap``), one backward pass and one SGD update added
back into the stacked tensors per step. A step computes only the models still training: one whose stop
rule has fired is left out (it stops moving) while the others go on.

Every model's parameters become views of the stacked tensors (``stack_models``), so whatever else works
on a model in place (LLPF's move and variance correction, evaluation, checkpoints) sees and changes
the stacked copy. Each model keeps its own batch stream, its own stop rule (docs/algorithm.md, M2M,
step 4: the rolling window of ``min_iters`` batch losses) and its own learning rate.
"""
import copy
import math
from collections import deque
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import TrainSpec
from .device import autocast
from .stackedforward import stacked_forward
from .train import BatchStream, TickTraining, TrainingDiverged, should_stop


def why_not_stackable(model: nn.Module) -> str | None:
    """Why ``model`` cannot be trained stacked (None: it can)."""
    if any(True for _ in model.buffers()):  # BatchNorm: per-model running statistics updated in place
        return "it has buffers (BatchNorm running statistics)"
    if any(not p.is_floating_point() for p in model.parameters()):
        return "it has non-float parameters"
    return None


def why_not_vmapped(model: nn.Module, x: torch.Tensor) -> str | None:
    """Why two copies of ``model`` cannot run as one stacked forward pass on inputs like ``x`` (a batch of
    the data), e.g. a forward with data-dependent control flow under ``torch.func.vmap`` (None: they can)."""
    params = {n: torch.stack([p.detach(), p.detach()]) for n, p in model.named_parameters()}
    try:
        with torch.no_grad():
            stacked_forward(model, params, torch.stack([x, x]))
    except Exception as e:  # noqa: BLE001  (whatever vmap refuses: the caller runs the pairs one by one)
        return f"its forward does not run under torch.func.vmap ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
    return None


def stack_models(models: list[nn.Module]) -> dict[str, torch.Tensor]:
    """Stack the models' parameters (name -> [K, ...]) and make each model's parameters views of them."""
    names = [n for n, _ in models[0].named_parameters()]
    params = [dict(m.named_parameters()) for m in models]
    stacked = {n: torch.stack([p[n].detach() for p in params]) for n in names}
    for k, p in enumerate(params):
        for n in names:
            p[n].data = stacked[n][k]
    return stacked


@dataclass
class Job:
    """One model's part of a stacked tick: its batches, its stop rule and its learning rates."""
    stream: BatchStream
    spec: TrainSpec
    scales: list[float] | None = None  # per parameter (M2O's angle-conformal rates), in the stacked order


class StackedTrainer:
    """Trains the models whose parameters ``stacked`` holds (from ``stack_models``), in lockstep."""

    def __init__(self, model: nn.Module, stacked: dict[str, torch.Tensor], dtype: str = "float32"):
        self.base = copy.deepcopy(model)  # the architecture the stacked weights run in
        self.names = list(stacked)
        self.tensors = [stacked[n] for n in self.names]
        self.k = self.tensors[0].shape[0]
        self.dtype = dtype
        self.jobs: dict[int, Job] = {}  # the models training now, by position in the stack
        self.windows: dict[int, deque] = {}
        self.counts: dict[int, list] = {}
        self.changed = True
        self.index = self.factors = None

    def start(self, k: int, job: Job) -> None:
        """Model ``k`` starts training (a new tick's ``train_until``) from the next step on."""
        self.jobs[k] = job
        self.windows[k] = deque(maxlen=job.spec.min_iters)
        self.counts[k] = [0, 0.0, 0]  # iterations, correct, seen
        self.changed = True

    @property
    def busy(self) -> bool:
        return bool(self.jobs)

    def train(self, jobs: dict[int, Job]) -> dict[int, TickTraining | TrainingDiverged]:
        """Train models ``jobs`` until each one's stop rule fires (the others stay as they are)."""
        for k, job in jobs.items():
            self.start(k, job)
        results = {}
        while self.busy:
            results.update(self.step())
        return results

    def step(self) -> dict[int, TickTraining | TrainingDiverged]:
        """One SGD step of every model now training. Returns the models whose training ended at this step:
        their ``TickTraining``, or the ``TrainingDiverged`` that ended it.

        A step computes only the models training (their parameters gathered from the stack, their
        updates added back), so a model that has stopped costs nothing while the others go on."""
        device = self.tensors[0].device
        active = sorted(self.jobs)
        if self.changed:  # the training models' positions and update factors (lr x conformal scale)
            self.index = torch.tensor(active, dtype=torch.long, device=device)
            self.factors = self._factors([self.jobs[k] for k in active], device)
            self.changed = False
        xs, ys, ws = _next_batches([self.jobs[k].stream for k in active])
        whole = len(active) == self.k  # every model trains: the stack itself, no gathering
        params = {n: (t.detach() if whole else t.index_select(0, self.index)).requires_grad_()
                  for n, t in zip(self.names, self.tensors)}
        with autocast(xs.device, self.dtype):
            outs = stacked_forward(self.base, params, xs)
        # per model, the mean loss over its real samples (w = 1; an epoch's short last batch is padded, w = 0)
        per_sample = F.cross_entropy(outs.float().flatten(0, 1), ys.flatten(), reduction="none").view(ys.shape)
        losses = (per_sample * ws).sum(1) / ws.sum(1)
        losses.sum().backward()
        with torch.no_grad():
            steps = torch._foreach_mul([params[n].grad for n in self.names], self.factors)
            if whole:
                torch._foreach_add_(self.tensors, steps, alpha=-1)
            else:
                for t, step in zip(self.tensors, steps):
                    t.index_add_(0, self.index, step, alpha=-1)
            hits = ((outs.argmax(-1) == ys).float() * ws).sum(-1)
            values, hits, seen = torch.stack([losses.detach(), hits, ws.sum(-1)]).tolist()  # one read
        results: dict[int, TickTraining | TrainingDiverged] = {}
        for j, k in enumerate(active):
            counts, spec = self.counts[k], self.jobs[k].spec
            counts[0] += 1
            counts[1] += hits[j]
            counts[2] += int(seen[j])
            if not math.isfinite(values[j]):
                results[k] = TrainingDiverged(f"training diverged: the loss became {values[j]} (iteration "
                                              f"{counts[0]}, lr {spec.lr:g}); lower the learning rate (train.lr)")
            else:
                self.windows[k].append(values[j])
                rolling = sum(self.windows[k]) / len(self.windows[k])
                if not should_stop(counts[0], rolling, spec):
                    continue
                results[k] = TickTraining(rolling, counts[1] / counts[2], counts[0])
            del self.jobs[k]
            self.changed = True
        return results

    def _factors(self, jobs: list[Job], device) -> list[torch.Tensor]:
        """Per parameter, an [A, 1, ...] factor for the A models ``jobs``: lr times the conformal scale."""
        rates = torch.tensor([[job.spec.lr * s for s in (job.scales or [1.0] * len(self.names))] for job in jobs],
                             dtype=torch.float64)
        return [rates[:, i].to(device=device, dtype=t.dtype).view(-1, *[1] * (t.dim() - 1))
                for i, t in enumerate(self.tensors)]


def _next_batches(streams: list[BatchStream]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x [A, B, ...], y [A, B], weights [A, B]): each stream's next batch. Streams over the same data without
    augmentation are gathered in one indexing; a short batch (an epoch's last) is padded with copies of its
    first sample at weight 0."""
    data = streams[0].data
    if all(s.data is data and not s.augments and s.memory_format == torch.contiguous_format for s in streams):
        idx = [s.next_indices() for s in streams]
        if all(len(i) == len(idx[0]) for i in idx):
            x, y = data.batch(torch.cat(idx))
            shape = (len(idx), len(idx[0]))
            return x.view(*shape, *x.shape[1:]), y.view(shape), torch.ones(shape, device=y.device)
        batches = [data.batch(i) for i in idx]
    else:
        batches = [s.next() for s in streams]
    size = max(len(y) for _, y in batches)
    xs, ys, ws = [], [], []
    for x, y in batches:
        w = torch.ones(size, device=y.device)
        pad = size - len(y)
        if pad:
            x = torch.cat([x, x[:1].expand(pad, *x.shape[1:])])
            y = torch.cat([y, y[:1].expand(pad)])
            w[len(w) - pad:] = 0
        xs.append(x)
        ys.append(y)
        ws.append(w)
    return torch.stack(xs), torch.stack(ys), torch.stack(ws)
