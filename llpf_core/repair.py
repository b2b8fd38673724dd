"""REPAIR (Jordan et al. 2023): renormalise an interpolated network's hidden units to the endpoints'.

At the point t between the (aligned) endpoints A and B, the plain interpolation's hidden units lose
variance. REPAIR measures, on fixed training inputs, every hidden Linear/Conv output's per-unit (per
channel) mean and standard deviation in A and in B, and, in forward order, rescales and shifts that
output in the interpolated network to (1 - t) A's + t B's. Each correction is an affine map per unit,
so it is fused into the module's weight and bias: the point stays an ordinary state dict of the same
architecture. Forward order matters: a layer's statistics are measured after the layers before it
were repaired. The output layer (the last Linear/Conv called) is not repaired.

Models with BatchNorm already renormalise their hidden units; for them REPAIR is the statistics
reset: the interpolated point's running statistics recomputed on the same fixed inputs (the evaluator,
llpf_core/evaluate.py, recomputes them again before any evaluation, so a BatchNorm model's repaired
point evaluates like its plain one). Other normalisation layers (LayerNorm, GroupNorm, ...) are refused.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn
from torch.func import functional_call

from .data import ImageData
from .errors import UserError
from .evaluate import fixed_subset, has_batchnorm

State = dict[str, torch.Tensor]
LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
OTHER_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm, nn.LocalResponseNorm)
TINY_STD = 1e-8  # a unit this constant is left as it is: no rescaling can give it a spread


def repair_inputs(data: ImageData, samples: int, seed: int, batch_size: int = 250) -> list[torch.Tensor]:
    """``samples`` fixed training inputs (drawn with ``seed``), normalised, in batches."""
    idx = fixed_subset(len(data), samples, seed, data.device)
    return [data.batch(chunk)[0] for chunk in idx.split(batch_size)]


def _layer_order(model: nn.Module, example: torch.Tensor) -> list[str]:
    """The Linear/Conv modules' names in the order one forward pass calls them."""
    order: list[str] = []
    names = {m: n for n, m in model.named_modules() if isinstance(m, LAYERS)}
    handles = [m.register_forward_hook(lambda mod, i, o: order.append(names[mod])) for m in names]
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in handles:
            h.remove()
    return order


def check_repairable(model: nn.Module, example: torch.Tensor) -> str:
    """``"batchnorm"`` (the statistics reset) or ``"fuse"`` (REPAIR fused into the layers); a one-line
    UserError for an architecture REPAIR cannot handle."""
    norms = sorted({type(m).__name__ for m in model.modules() if isinstance(m, OTHER_NORMS)})
    if norms:
        raise UserError(f"REPAIR cannot handle {', '.join(norms)} layers; it supports BatchNorm models and "
                        f"models of Linear/Conv layers without normalisation; turn curve.repair off")
    if has_batchnorm(model):
        return "batchnorm"
    order = _layer_order(model, example)
    modules = dict(model.named_modules())
    twice = sorted({n for n in order if order.count(n) > 1})
    unused = sorted(n for n, m in modules.items() if isinstance(m, LAYERS) and n not in order)
    no_bias = [n for n in order[:-1] if modules[n].bias is None]
    if len(order) < 2 or twice or unused or no_bias:
        why = ("it has no hidden Linear/Conv layer" if len(order) < 2 else
               f"layer {(twice or unused)[0]} is used {'more than once' if twice else 'outside its forward call'}"
               if twice or unused else f"hidden layer {no_bias[0]} has no bias to fuse the shift into")
        raise UserError(f"REPAIR cannot handle this model: {why}; turn curve.repair off")
    return "fuse"


@contextmanager
def _recording(model: nn.Module, names: list[str]):
    """Per-unit sums, sums of squares and counts (float64) of the named modules' outputs, over the
    forward passes run inside the block: ``{name: [sum, sum_sq, count]}``."""
    stats: dict[str, list] = {n: [0.0, 0.0, 0] for n in names}
    modules = dict(model.named_modules())

    def hook(name):
        def record(module, inputs, out):
            unit_dim = 1 if isinstance(module, LAYERS[1:]) else out.dim() - 1
            flat = out.detach().double().movedim(unit_dim, -1).reshape(-1, out.shape[unit_dim])
            entry = stats[name]
            entry[0] = entry[0] + flat.sum(0)
            entry[1] = entry[1] + (flat * flat).sum(0)
            entry[2] += flat.shape[0]
        return record
    handles = [modules[n].register_forward_hook(hook(n)) for n in names]
    try:
        yield stats
    finally:
        for h in handles:
            h.remove()


def _mean_std(entry: list) -> tuple[torch.Tensor, torch.Tensor]:
    total, total_sq, count = entry
    mean = total / count
    var = (total_sq / count - mean * mean).clamp_min(0)
    return mean, var.sqrt()


class Repair:
    """REPAIRed points between ``a`` and ``b`` of ``model``, measured on the fixed input batches
    ``inputs``. ``model`` is a scratch skeleton: run with ``functional_call``, and for the BatchNorm
    reset loaded with the point's state."""

    def __init__(self, model: nn.Module, a: State, b: State, inputs: list[torch.Tensor]):
        self.model, self.a, self.b, self.inputs = model, a, b, inputs
        self.kind = check_repairable(model, inputs[0][:2])
        if self.kind == "fuse":
            self.hidden = _layer_order(model, inputs[0][:2])[:-1]
            self.targets_a, self.targets_b = self.statistics(a), self.statistics(b)

    def statistics(self, state: State, names: list[str] | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per-unit mean and standard deviation of the hidden layers' outputs (pre-activations) in
        ``state``, over the fixed inputs."""
        names = self.hidden if names is None else names
        with _recording(self.model, names) as stats, torch.no_grad():
            for x in self.inputs:
                functional_call(self.model.eval(), state, (x,))
        return {n: _mean_std(stats[n]) for n in names}

    def targets(self, t: float) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The interpolated statistics REPAIR sets at ``t``: (1 - t) A's + t B's, mean and std."""
        return {n: tuple(torch.lerp(sa, sb, t) for sa, sb in zip(self.targets_a[n], self.targets_b[n]))
                for n in self.hidden}

    def point(self, t: float) -> State:
        """The REPAIRed state at ``t``: the interpolation (1 - t) a + t b, with every hidden layer's
        correction fused into its weight and bias (or, with BatchNorm, the running statistics reset)."""
        state = {k: torch.lerp(v, self.b[k], t) if v.is_floating_point() else (self.b[k] if t > 0.5 else v).clone()
                 for k, v in self.a.items()}
        if self.kind == "batchnorm":
            return self._reset_batchnorm(state)
        targets = self.targets(t)
        for name in self.hidden:
            mean, std = self.statistics(state, [name])[name]
            goal_mean, goal_std = targets[name]
            scale = torch.where(std > TINY_STD, goal_std / std.clamp_min(TINY_STD), 1.0)
            weight, bias = state[f"{name}.weight"], state[f"{name}.bias"]
            shape = (-1,) + (1,) * (weight.dim() - 1)
            state[f"{name}.weight"] = (weight.double() * scale.view(shape)).to(weight.dtype)
            state[f"{name}.bias"] = ((bias.double() - mean) * scale + goal_mean).to(bias.dtype)
        return state

    @torch.no_grad()
    def _reset_batchnorm(self, state: State) -> State:
        """``state`` with BatchNorm's running statistics recomputed as the exact average over the inputs."""
        model = self.model
        model.load_state_dict(state)
        bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
        try:
            model.train()
            for x in self.inputs:
                model(x)
        finally:
            for m, momentum in zip(bns, momenta):
                m.momentum = momentum
            model.eval()
        return {k: v.detach().clone() for k, v in model.state_dict().items()}
