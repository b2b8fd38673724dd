"""``autoneb``: AutoNEB (Draxler et al. 2018) as a registered path method; the algorithm is llpf_core/neb.py.

Settings under ``autoneb.*`` (``neb.AutoNEBSettings``; the cycle schedule as ``autoneb.cycles``, e.g.
``--set autoneb.cycles.0.steps=100``). A unit of work is SGD steps up to the next checkpoint, for about
``UNIT_S`` seconds, or until Stop or Pause (a cycle's insertions and dense evaluation happen on the way).
The state machine checkpoints at any step, so a resumed run continues exactly. Its points are the final
pivots, from exactly A to exactly B; run.json's ``autoneb`` records pivots, cycles, SGD steps, the last
dense maximum and the per-cycle history.
"""
import time

import torch

from ..config import method_settings
from ..neb import AutoNEB, AutoNEBSettings, evaluator_loss
from ..registry import build_model
from ..train import TrainingDiverged
from .base import UNIT_S, Method, MethodContext, Step
from .registry import register_method

DENSE_SEED_OFFSET = 5  # the dense evaluation's fixed samples: drawn with seed + 5 (the evaluator uses seed)


# The Search page shows one input per scalar setting; the schedule is set with --set autoneb.cycles.N.*
SCALARS = ("pivots", "batch_size", "momentum", "weight_decay", "dense_per_segment", "insert_threshold",
           "dense_samples")


@register_method("autoneb", settings=AutoNEBSettings, preset_family="m2m", reads=SCALARS,
                 description="AutoNEB: a chain of pivots relaxed by tangent-projected SGD, pivots inserted at "
                             "bulges (Draxler et al. 2018)")
class AutoNEBMethod(Method):
    @classmethod
    def check(cls, start, end, cfg) -> None:
        method_settings(cfg).check()

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        s = ctx.settings
        model = build_model(ctx.start.meta.model, **ctx.start.meta.model_kwargs).to(ctx.device)
        self.neb = AutoNEB(model, ctx.a, ctx.b, ctx.batches(s.batch_size),
                           evaluator_loss(ctx.evaluator, s.dense_samples, ctx.cfg.seed + DENSE_SEED_OFFSET), s)

    @property
    def total(self) -> int:
        return self.neb.total_steps

    def done(self) -> bool:
        return self.neb.done

    def advance(self) -> Step:
        neb, every, t0, losses = self.neb, self.ctx.cfg.checkpoint_every, time.monotonic(), []
        while not neb.done and not self.ctx.interrupted():
            if not neb.advance(1):
                break  # the last cycle's dense evaluation ended the schedule
            self.progress = neb.sgd_steps
            losses.append(neb.last_losses[1:-1].max())
            if self.progress % every == 0 or time.monotonic() - t0 >= UNIT_S:
                break
        loss = float(torch.stack(losses).mean()) if losses else None
        if loss is not None and not torch.isfinite(torch.tensor(loss)):
            raise TrainingDiverged(f"training diverged: the pivots' loss became {loss} before step {self.progress}; "
                                   f"lower the learning rates (autoneb.cycles.N.lr)")
        cycle = min(neb.cycle, len(neb.settings.cycles) - 1)
        row = {"iterations": len(losses), "train_loss_rolling": loss, "phase": f"autoneb:{cycle}",
               "pivots": len(neb.pivots), "cycle": neb.cycle}
        if neb.history:
            row["dense_max"] = neb.history[-1]["dense_max"]
        return Step(row)

    def sgd_steps(self) -> int:
        return self.neb.sgd_steps

    def state_dict(self) -> tuple[dict, dict]:
        return self.neb.state_dict()

    def load_state_dict(self, tensors: dict, info: dict) -> None:
        super().load_state_dict(tensors, info)
        self.neb.load_state_dict(tensors, info)
        self.ctx.record(resumed_from_step=self.progress)

    def path(self) -> list[dict]:
        neb = self.neb
        self.ctx.record(autoneb={"pivots": len(neb.pivots), "interior_pivots": len(neb.pivots) - 2,
                                 "cycles": len(neb.history), "sgd_steps": neb.sgd_steps,
                                 "dense_max": neb.history[-1]["dense_max"] if neb.history else None,
                                 "history": neb.history})
        return neb.path_states()
