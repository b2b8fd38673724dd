"""``linear``: the straight line from A to B as a path (no training)."""
from ..config import CurveSpec
from .base import Method, line_states
from .registry import register_method


@register_method("linear", settings=CurveSpec, prefix="curve", preset_family="m2m", reads=("points",),
                 description="the straight line from the start to the end mode (no training)")
class Linear(Method):
    def path(self) -> list[dict]:
        return line_states(self.ctx.a, self.ctx.b, self.ctx.settings.points)
