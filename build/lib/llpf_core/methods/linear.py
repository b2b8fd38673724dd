"""``linear``: the straight line from A to B as a path (no training)."""
from .common import Context, MethodPath, line_states


def build(ctx: Context) -> MethodPath:
    return MethodPath(line_states(ctx.a, ctx.b, ctx.cfg.curve.points))
