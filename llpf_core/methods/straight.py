"""The straight-line methods (linear, rebasin): the line's points, plain or REPAIRed (``curve.repair``).

With ``curve.repair=true`` every interior point of the line is REPAIRed (llpf_core/repair.py): its hidden
Linear/Conv outputs renormalised to the endpoints' interpolated statistics, measured on
``curve.repair_samples`` fixed training samples (drawn with seed + 6), the correction fused into the
layers; for BatchNorm models, the statistics reset. The ends stay exactly the endpoints.
"""
import torch

from ..errors import UserError
from ..registry import build_model
from .base import Method, curve_ts, line_states

REPAIR_SEED_OFFSET = 6  # REPAIR's fixed samples: seed + 6 (the evaluator uses seed, continuity seed + 4)


def check_repair(start, cfg) -> None:
    """Refuse, in one line and before any data is loaded, a model REPAIR cannot handle (the checks that
    need a forward pass run here when the mode names its image size, else on the data in ``line``)."""
    from ..repair import OTHER_NORMS, check_repairable
    meta = start.meta
    kwargs = meta.model_kwargs
    model = build_model(meta.model, **kwargs)
    norms = sorted({type(m).__name__ for m in model.modules() if isinstance(m, OTHER_NORMS)})
    if norms:
        raise UserError(f"REPAIR cannot handle {', '.join(norms)} layers ({meta.model}); it supports BatchNorm "
                        f"models and models of Linear/Conv layers without normalisation; turn curve.repair off")
    size = kwargs.get("image_size")
    if size is not None:
        check_repairable(model, torch.zeros(2, kwargs.get("in_channels", 1), size, size))


class StraightLine(Method):
    """A method whose path is the straight line from the start to an end it chooses (``line``)."""

    @classmethod
    def check(cls, start, end, cfg) -> None:
        if cfg.curve.repair:
            check_repair(start, cfg)

    def curve_parameters(self) -> list[float]:
        return curve_ts(self.ctx.settings.points)

    def line(self, b: dict[str, torch.Tensor]) -> list[dict]:
        """The points from ``ctx.a`` to ``b``: plain, or REPAIRed with ``curve.repair``."""
        ctx, s = self.ctx, self.ctx.settings
        if not s.repair:
            return line_states(ctx.a, b, s.points)
        from ..repair import Repair, repair_inputs
        meta = ctx.start.meta
        model = build_model(meta.model, **meta.model_kwargs).to(ctx.device)
        inputs = repair_inputs(ctx.train_data, s.repair_samples, ctx.cfg.seed + REPAIR_SEED_OFFSET)
        repair = Repair(model, ctx.a, b, inputs)
        ctx.record(repair=repair.kind)
        ts = curve_ts(s.points)
        return [dict(ctx.a), *(repair.point(t) for t in ts[1:-1]), dict(b)]
