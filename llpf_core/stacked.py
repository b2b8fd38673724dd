"""K models of one architecture trained together: their parameters stacked along a new first dimension,
one vmapped forward pass (``torch.func.functional_call`` under ``torch.func.vmap``), one backward pass
and one SGD update added back into the stacked tensors per step. A step computes only the models still
training: one whose stop rule has fired is left out (it stops moving) while the others go on.

Every model's parameters become views of the stacked tensors (``stack_models``), so whatever else works
on a model in place (LLPF's move and variance correction, evaluation, checkpoints) sees and changes
the stacked copy. Each model keeps its own batch stream, its own stop rule (llpf-algorithm.md 1.2
step 7: the rolling window of ``min_iters`` batch losses) and its own learning rate.
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

    def train(self, jobs: dict[int, Job]) -> dict[int, TickTraining | TrainingDiverged]:
        """Train models ``jobs`` (by index in the stack) until each one's stop rule fires; the others stay
        as they are. Returns each model's ``TickTraining``, or the ``TrainingDiverged`` that ended it.

        Each step computes only the models still training (their parameters gathered from the stack, their
        updates added back), so a batch costs what its active models cost, not its slowest model's
        iterations times its width."""
        device = self.tensors[0].device
        active = sorted(jobs)
        windows = {k: deque(maxlen=jobs[k].spec.min_iters) for k in jobs}
        iterations = dict.fromkeys(jobs, 0)
        correct, seen = dict.fromkeys(jobs, 0.0), dict.fromkeys(jobs, 0)
        results: dict[int, TickTraining | TrainingDiverged] = {}
        changed = True
        while active:
            if changed:  # the active models' positions and update factors (lr x conformal scale)
                index = torch.tensor(active, dtype=torch.long, device=device)
                factors = self._factors([jobs[k] for k in active], device)
                changed = False
            xs, ys, ws = _stack_batches([jobs[k].stream.next() for k in active])
            params = {n: t.index_select(0, index).requires_grad_() for n, t in zip(self.names, self.tensors)}
            losses, outs = self.forward(params, xs, ys, ws)
            losses.sum().backward()
            with torch.no_grad():
                steps = torch._foreach_mul([params[n].grad for n in self.names], factors)
                for t, step in zip(self.tensors, steps):
                    t.index_add_(0, index, step, alpha=-1)
                hits = ((outs.argmax(-1) == ys).float() * ws).sum(-1).tolist()
                counts = ws.sum(-1).tolist()
            values = losses.detach().tolist()
            for j, k in enumerate(list(active)):
                iterations[k] += 1
                correct[k] += hits[j]
                seen[k] += int(counts[j])
                if not math.isfinite(values[j]):
                    results[k] = TrainingDiverged(
                        f"training diverged: the loss became {values[j]} (iteration {iterations[k]}, lr "
                        f"{jobs[k].spec.lr:g}); lower the learning rate (train.lr)")
                else:
                    windows[k].append(values[j])
                    rolling = sum(windows[k]) / len(windows[k])
                    if not should_stop(iterations[k], rolling, jobs[k].spec):
                        continue
                    results[k] = TickTraining(rolling, correct[k] / seen[k], iterations[k])
                active.remove(k)
                changed = True
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
