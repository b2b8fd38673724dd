"""``bezier``: a quadratic Bezier curve with one trained bend (Garipov et al. 2018, FGE).

theta(t) = (1 - t)^2 A + 2 t (1 - t) C + t^2 B; C starts at the midpoint and is trained by SGD with
one t ~ U(0, 1) drawn per batch. BatchNorm statistics are recomputed at each evaluated t by the evaluator.
Its checkpoint holds the bend and SGD's momentum (TrainedCurve; the driver adds the batch stream and the
random state), so a resumed run continues with the same batches and t as an uninterrupted one.
"""
import torch
import torch.nn.functional as F
from torch.func import functional_call

from ..config import CurveSpec
from ..registry import build_model
from .base import MethodContext, TrainedCurve, curve_ts, float_keys
from .registry import register_method


def bezier(a: torch.Tensor, c: torch.Tensor, b: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """The point at ``t`` of the quadratic Bezier curve from ``a`` over the bend ``c`` to ``b``."""
    return (1 - t) ** 2 * a + 2 * t * (1 - t) * c + t ** 2 * b


@register_method("bezier", settings=CurveSpec, prefix="curve", preset_family="m2m",
                 description="a quadratic Bezier curve whose bend is trained by SGD (Garipov et al. 2018)")
class Bezier(TrainedCurve):
    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        spec, a, b = ctx.settings, ctx.a, ctx.b
        self.params = {k for k, _ in build_model(ctx.start.meta.model, **ctx.start.meta.model_kwargs)
                       .named_parameters()}
        self.bend = self.trained = {k: ((a[k] + b[k]) / 2).clone().requires_grad_(k in self.params)
                                    for k in float_keys(a)}
        self.model = build_model(ctx.start.meta.model, **ctx.start.meta.model_kwargs).to(ctx.device).train()
        self.optimizer = torch.optim.SGD([v for k, v in self.bend.items() if k in self.params], lr=spec.lr,
                                         momentum=spec.momentum)
        self.stream = ctx.batches(spec.batch_size)

    @property
    def total(self) -> int:
        return self.ctx.settings.steps

    def train_step(self) -> torch.Tensor:
        a, b = self.ctx.a, self.ctx.b
        x, y = self.stream.next()
        t = float(torch.rand((), generator=self.ctx.generator, device=self.ctx.device))
        state = {k: bezier(a[k], self.bend[k], b[k], t) if k in self.params else a[k].clone() for k in a}
        loss = F.cross_entropy(functional_call(self.model, state, (x,)), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss

    def curve_parameters(self) -> list[float]:
        return curve_ts(self.ctx.settings.points)

    def path(self) -> list[dict]:
        a, b, points = self.ctx.a, self.ctx.b, self.ctx.settings.points
        with torch.no_grad():
            ts = [i / (points - 1) for i in range(points)]
            states = [{k: bezier(a[k], self.bend[k].detach(), b[k], t) if k in self.bend else
                       (b[k] if t > 0.5 else a[k]) for k in a} for t in ts]
        states[-1] = dict(b)  # exactly B (the formula gives it up to rounding)
        return states
