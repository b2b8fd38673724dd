"""K models of one architecture trained together: their parameters stacked along a new first dimension,
one vmapped forward pass (``torch.func.functional_call`` under ``torch.func.vmap``), one backward pass
and one fused SGD update over the stacked tensors, with a mask so a model that has met its stop rule
stops moving while the others go on.

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
        as they are. Returns each model's ``TickTraining``, or the ``TrainingDiverged`` that ended it."""
        device = self.tensors[0].device
        active = {k: True for k in jobs}
        windows = {k: deque(maxlen=jobs[k].spec.min_iters) for k in jobs}
        iterations = dict.fromkeys(jobs, 0)
        results: dict[int, TickTraining | TrainingDiverged] = {}
        correct = torch.zeros(self.k, device=device)
        seen = torch.zeros(self.k, device=device)
        last: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        factors = mask = None
        changed = True
        while any(active.values()):
            if changed:  # the update's per-model factors: lr x conformal scale for an active model, else 0
                mask, factors = self._factors(jobs, active, device)
                changed = False
            for k in range(self.k):
                if active.get(k):
                    last[k] = jobs[k].stream.next()
            xs, ys, ws = _stack_batches([last.get(k) for k in range(self.k)])
            params = {n: t.detach().requires_grad_() for n, t in zip(self.names, self.tensors)}
            losses, outs = self.forward(params, xs, ys, ws)
            torch.where(mask, losses, torch.zeros_like(losses)).sum().backward()
            with torch.no_grad():
                grads = [params[n].grad for n in self.names]
                torch._foreach_mul_(grads, factors)
                torch._foreach_sub_(self.tensors, grads)
                hits = ((outs.argmax(-1) == ys).float() * ws).sum(-1)
                correct += torch.where(mask, hits, torch.zeros_like(hits))
                seen += mask.float() * ws.sum(-1)
            values = losses.detach().tolist()
            for k in [k for k, on in active.items() if on]:
                iterations[k] += 1
                if not math.isfinite(values[k]):
                    results[k] = TrainingDiverged(
                        f"training diverged: the loss became {values[k]} (iteration {iterations[k]}, lr "
                        f"{jobs[k].spec.lr:g}); lower the learning rate (train.lr)")
                    active[k], changed = False, True
                    continue
                windows[k].append(values[k])
                rolling = sum(windows[k]) / len(windows[k])
                if should_stop(iterations[k], rolling, jobs[k].spec):
                    results[k] = TickTraining(rolling, float(correct[k] / seen[k]), iterations[k])
                    active[k], changed = False, True
        return results

    def _factors(self, jobs: dict[int, Job], active: dict[int, bool], device) -> tuple[torch.Tensor, list]:
        """(mask [K], per parameter a [K, 1, ...] factor): lr times the conformal scale, 0 where not active."""
        rates = torch.zeros(self.k, len(self.names), dtype=torch.float64)
        for k, job in jobs.items():
            if active[k]:
                rates[k] = torch.tensor(job.scales or [1.0] * len(self.names), dtype=torch.float64) * job.spec.lr
        mask = torch.tensor([bool(active.get(k)) for k in range(self.k)], device=device)
        factors = [rates[:, i].to(device=device, dtype=t.dtype).view(-1, *[1] * (t.dim() - 1))
                   for i, t in enumerate(self.tensors)]
        return mask, factors


def _stack_batches(batches: list[tuple[torch.Tensor, torch.Tensor] | None]):
    """(x [K, B, ...], y [K, B], weights [K, B]) from each model's batch; a short batch (an epoch's last)
    is padded with copies of its first sample at weight 0, and a model without one (not training) gets
    any other's at weight 0."""
    some = next(b for b in batches if b is not None)
    size = max(len(b[1]) for b in batches if b is not None)
    xs, ys, ws = [], [], []
    for b in batches:
        x, y = b if b is not None else some
        n = len(y) if b is not None else 0
        pad = size - len(y)
        if pad:
            x = torch.cat([x, x[:1].expand(pad, *x.shape[1:])])
            y = torch.cat([y, y[:1].expand(pad)])
        w = torch.zeros(size, device=y.device)
        w[:n] = 1
        xs.append(x)
        ys.append(y)
        ws.append(w)
    return torch.stack(xs), torch.stack(ys), torch.stack(ws)
