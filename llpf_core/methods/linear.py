"""``linear``: the straight line from A to B as a path (no training); REPAIRed with ``curve.repair``."""
from ..config import CurveSpec
from .registry import register_method
from .straight import StraightLine


@register_method("linear", settings=CurveSpec, prefix="curve", preset_family="m2m",
                 reads=("points", "repair", "repair_samples"),
                 description="the straight line from the start to the end mode (no training; curve.repair: REPAIRed)")
class Linear(StraightLine):
    def path(self) -> list[dict]:
        return self.line(self.ctx.b)
