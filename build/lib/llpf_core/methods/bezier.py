"""``bezier``: a quadratic Bezier curve with one trained bend (Garipov et al. 2018, FGE).

theta(t) = (1 - t)^2 A + 2 t (1 - t) C + t^2 B; C starts at the midpoint and is trained by SGD with
one t ~ U(0, 1) drawn per batch. BatchNorm statistics are recomputed at each evaluated t by the evaluator.

The training checkpoints every ``checkpoint_every`` steps and when stopped (the bend, SGD's momentum, the
batch stream and the random state), and a resumed run continues from there with the same batches and t
as an uninterrupted one.
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
    steps = _restore(ctx, bend, trained, optimizer, stream)
    while steps < spec.steps:
        if ctx.stop_event.is_set():
            _checkpoint(ctx, steps, bend, trained, optimizer, stream)
            break
        x, y = stream.next()
        t = float(torch.rand((), generator=generator, device=ctx.device))
        state = {k: bezier(ctx.a[k], bend[k], ctx.b[k], t) if k in params else ctx.a[k].clone() for k in ctx.a}
        loss = F.cross_entropy(functional_call(model, state, (x,)), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
        if steps % cfg.checkpoint_every == 0 and steps < spec.steps:
            _checkpoint(ctx, steps, bend, trained, optimizer, stream)
    with torch.no_grad():
        ts = [i / (spec.points - 1) for i in range(spec.points)]
        states = [{k: bezier(ctx.a[k], bend[k].detach(), ctx.b[k], t) if k in bend else
                   (ctx.b[k] if t > 0.5 else ctx.a[k]) for k in ctx.a} for t in ts]
        states[-1] = dict(ctx.b)  # exactly B (the formula gives it up to rounding)
    return MethodPath(states, sgd_steps=steps)


def _checkpoint(ctx: Context, steps: int, bend: dict, trained: list, optimizer, stream: BatchStream) -> None:
    tensors = {f"bend.{k}": v.detach() for k, v in bend.items()}
    for i, p in enumerate(trained):
        buf = optimizer.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            tensors[f"momentum.{i}"] = buf
    stream_state = stream.state_dict()
    tensors.update({"stream.perm": stream_state["perm"], "stream.rng": stream_state["rng"],
                    "torch.rng": torch.get_rng_state()})
    ctx.writer.save_checkpoint(tensors, {"algorithm": "bezier", "step": steps, "steps": ctx.cfg.curve.steps,
                                         "stream_pos": stream_state["pos"]})


def _restore(ctx: Context, bend: dict, trained: list, optimizer, stream: BatchStream) -> int:
    """The step a resumed run continues after (0 for a new run), with its state loaded."""
    if ctx.checkpoint is None:
        return 0
    tensors, info = ctx.checkpoint
    with torch.no_grad():
        for k, v in bend.items():
            v.copy_(tensors[f"bend.{k}"])
    for i, p in enumerate(trained):
        if f"momentum.{i}" in tensors:
            optimizer.state[p]["momentum_buffer"] = tensors[f"momentum.{i}"].to(p.device).clone()
    stream.load_state_dict({"perm": tensors["stream.perm"], "pos": info["stream_pos"], "rng": tensors["stream.rng"]})
    torch.set_rng_state(tensors["torch.rng"])
    ctx.writer.update(resumed_from_step=int(info["step"]))
    return int(info["step"])
