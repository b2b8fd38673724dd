"""K models of one architecture trained together: their parameters stacked along a new first dimension,
one vmapped forward pass (``torch.func.functional_call`` under ``torch.func.vmap``), one backward pass
and one SGD update added back into the stacked tensors per step. A step computes only the models still
training: one whose stop rule has fired is left out (it stops moving) while the others go on.

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
from torch.func import functional_call, vmap

from .config import TrainSpec
from .device import autocast
from .train import BatchStream, TickTraining, TrainingDiverged, should_stop


def why_not_stackable(model: nn.Module) -> str | None:
    """Why ``model`` cannot be trained stacked (None: it can)."""
    if any(True for _ in model.buffers()):  # BatchNorm: per-model running statistics updated in place
        return "it has buffers (BatchNorm running statistics)"
    if any(not p.is_floating_point() for p in model.parameters()):
        return "it has non-float parameters"
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
        self.base = copy.deepcopy(model)  # the architecture functional_call runs with the stacked weights
        self.names = list(stacked)
        self.tensors = [stacked[n] for n in self.names]
        self.k = self.tensors[0].shape[0]
        self.dtype = dtype

        def loss_of(params: dict, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor):
            """The mean loss over the real samples (w = 1; an epoch's short last batch is padded, w = 0)."""
            with autocast(x.device, dtype):
                out = functional_call(self.base, params, (x,))
            return (F.cross_entropy(out.float(), y, reduction="none") * w).sum() / w.sum(), out

        self.forward = vmap(loss_of, randomness="different")
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
        xs, ys, ws = _stack_batches([self.jobs[k].stream.next() for k in active])
        params = {n: t.index_select(0, self.index).requires_grad_() for n, t in zip(self.names, self.tensors)}
        losses, outs = self.forward(params, xs, ys, ws)
        losses.sum().backward()
        with torch.no_grad():
            steps = torch._foreach_mul([params[n].grad for n in self.names], self.factors)
            for t, step in zip(self.tensors, steps):
                t.index_add_(0, self.index, step, alpha=-1)
            hits = ((outs.argmax(-1) == ys).float() * ws).sum(-1).tolist()
            seen = ws.sum(-1).tolist()
        values = losses.detach().tolist()
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


def _stack_batches(batches: list[tuple[torch.Tensor, torch.Tensor]]):
    """(x [A, B, ...], y [A, B], weights [A, B]) from each model's batch; a short batch (an epoch's last)
    is padded with copies of its first sample at weight 0."""
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
