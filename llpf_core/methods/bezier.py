"""``bezier``: a quadratic Bezier curve with one trained bend (Garipov et al. 2018, FGE).

theta(t) = (1 - t)^2 A + 2 t (1 - t) C + t^2 B; C starts at the midpoint and is trained by SGD with
one t ~ U(0, 1) drawn per batch. BatchNorm statistics are recomputed at each evaluated t by the evaluator.
"""
import torch
import torch.nn.functional as F
from torch.func import functional_call

from ..registry import build_model
from ..train import BatchStream
from .common import Context, MethodPath, float_keys


def bezier(a: torch.Tensor, c: torch.Tensor, b: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """The point at ``t`` of the quadratic Bezier curve from ``a`` over the bend ``c`` to ``b``."""
    return (1 - t) ** 2 * a + 2 * t * (1 - t) * c + t ** 2 * b


def build(ctx: Context) -> MethodPath:
    cfg, spec = ctx.cfg, ctx.cfg.curve
    keys = float_keys(ctx.a)
    params = {k for k, _ in build_model(ctx.meta.model, **ctx.meta.model_kwargs).named_parameters()}
    bend = {k: ((ctx.a[k] + ctx.b[k]) / 2).clone().requires_grad_(k in params) for k in keys}
    trained = [bend[k] for k in keys if k in params]
    model = build_model(ctx.meta.model, **ctx.meta.model_kwargs).to(ctx.device).train()
    optimizer = torch.optim.SGD(trained, lr=spec.lr, momentum=spec.momentum)
    generator = torch.Generator(ctx.device).manual_seed(cfg.seed)
    stream = BatchStream(ctx.train_data, spec.batch_size, generator)
    torch.manual_seed(cfg.seed)
    steps = 0
    for steps in range(1, spec.steps + 1):
        if ctx.stop_event.is_set():
            break
        x, y = stream.next()
        t = float(torch.rand((), generator=generator, device=ctx.device))
        state = {k: bezier(ctx.a[k], bend[k], ctx.b[k], t) if k in params else ctx.a[k].clone() for k in ctx.a}
        loss = F.cross_entropy(functional_call(model, state, (x,)), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        ts = [i / (spec.points - 1) for i in range(spec.points)]
        states = [{k: bezier(ctx.a[k], bend[k].detach(), ctx.b[k], t) if k in bend else
                   (ctx.b[k] if t > 0.5 else ctx.a[k]) for k in ctx.a} for t in ts]
        states[-1] = dict(ctx.b)  # exactly B (the formula gives it up to rounding)
    return MethodPath(states, sgd_steps=steps)
