"""``polychain``: a polygonal chain with one bend, A -> C -> B (Garipov et al. 2018), as a plugin method.

    python -m llpf_core connect A.safetensors B.safetensors --algorithm polychain --plugin examples/polychain.py

The bend C starts at the midpoint of A and B and is trained by SGD: each batch draws t ~ U(0, 1) and
steps on the loss of the chain's point at t. Its settings live under ``polychain.*`` in the run's
config (``--set polychain.steps=500``). docs/writing-a-method.md explains each part.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call

from llpf_core import TrainedCurve, UserError, build_model, register_method


@dataclass
class PolychainSettings:
    points: int = 21  # evaluated and saved points along the path, both ends included
    steps: int = 2000  # SGD steps on the bend
    lr: float = 0.05
    momentum: float = 0.9
    batch_size: int = 64

    def __post_init__(self):
        if self.points < 3 or self.steps < 0 or self.lr <= 0 or self.batch_size < 1:
            raise UserError("polychain needs points >= 3, steps >= 0, lr > 0 and batch_size >= 1")


def chain(a: torch.Tensor, c: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """The point at ``t`` of the chain: A to C for t <= 1/2, then C to B."""
    return a + 2 * t * (c - a) if t <= 0.5 else c + (2 * t - 1) * (b - c)


@register_method("polychain", settings=PolychainSettings,
                 description="a polygonal chain A -> bend -> B whose bend is trained by SGD (Garipov et al. 2018)")
class Polychain(TrainedCurve):
    def __init__(self, ctx):
        super().__init__(ctx)
        meta, s = ctx.start.meta, ctx.settings
        self.model = build_model(meta.model, **meta.model_kwargs).to(ctx.device).train()
        trained = {name for name, _ in self.model.named_parameters()}
        self.trained = {k: ((ctx.a[k] + ctx.b[k]) / 2).requires_grad_() for k in trained}  # the bend
        self.optimizer = torch.optim.SGD(list(self.trained.values()), lr=s.lr, momentum=s.momentum)
        self.stream = ctx.batches(s.batch_size)

    @property
    def total(self) -> int:
        return self.ctx.settings.steps

    def point(self, t: float) -> dict:
        a, b = self.ctx.a, self.ctx.b  # buffers (BatchNorm statistics) from the nearer end
        return {k: chain(a[k], self.trained[k], b[k], t) if k in self.trained else (a[k] if t < 0.5 else b[k])
                for k in a}

    def train_step(self) -> torch.Tensor:
        x, y = self.stream.next()
        t = float(torch.rand((), generator=self.ctx.generator, device=self.ctx.device))
        loss = F.cross_entropy(functional_call(self.model, self.point(t), (x,)), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss

    def curve_parameters(self) -> list[float]:  # path.csv's t
        n = self.ctx.settings.points
        return [i / (n - 1) for i in range(n)]

    def path(self) -> list[dict]:
        n = self.ctx.settings.points
        with torch.no_grad():
            return [{k: v.detach() for k, v in self.point(i / (n - 1)).items()} for i in range(n)]
