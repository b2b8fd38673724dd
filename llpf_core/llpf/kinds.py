"""The kinds of LLPF stage (docs/algorithm.md, M2M and M2O): where each heads, how it treats the
layers' variance, and when it has reached the end mode's sphere.

- ``m2m``: toward the end mode; variance correction before and after training.
- ``m2o``: toward the origin; never moves norm layers; angle-conformal learning rates; on the end's
  sphere once every moved layer's variance is at or below the end's.
- ``to_vs``: toward the radial projection onto the end mode's sphere, recomputed every tick; on the
  sphere once every moved layer's norm is within ``bridge.tolerance`` of the end's.
A kind reads the search's state (``s``: connect.LLPF) and changes none of it.
"""
from abc import ABC, abstractmethod

import torch

from ..geometry import distances, variance
from ..train import PlainSGD


class Kind(ABC):
    name = ""
    corrects_variance = False  # variance correction before and after the tick's training (M2M)
    conformal_lr = False  # angle-conformal learning rates (M2O)
    moves_norm_layers = True
    fraction_only_ok = True  # a phase moving by step_a alone (no step_f, step_c or clamp) is one fused lerp
    sphere_measure = "norm"  # what reaches the end's sphere
    ends_at_end_mode = False  # a run ending with this kind ends at the end mode (it has a baseline)

    def __str__(self) -> str:
        return self.name

    @abstractmethod
    def destination(self, s, xs: list[torch.Tensor]) -> list[torch.Tensor] | None:
        """Where the moved layers ``xs`` (s.unit_names) head this tick; None: the origin."""

    def sphere_ratio(self, s, xs: list[torch.Tensor], idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(measure / the end's, distance from the sphere, the end's measure) of layers ``xs`` (indices ``idx``)."""
        target = s.end_norm[idx]
        ratio = distances(xs, None) / target.clamp_min(1e-30)
        return ratio, (ratio - 1).abs(), target

    def reached(self, s, xs: list[torch.Tensor], idx: torch.Tensor) -> bool:
        """Every layer of ``xs`` is on the end mode's sphere (decision 6; a zero end layer counts as on it)."""
        end_norm = s.end_norm[idx]
        return bool((((distances(xs, None) / end_norm - 1).abs() <= s.cfg.bridge.tolerance) | (end_norm <= 0)).all())

    def tolerance(self, cfg) -> float | None:
        return cfg.bridge.tolerance

    def layer_distances(self, s) -> torch.Tensor:
        """Per-layer distance to this kind's destination, when it is the run's last stage."""
        return distances(s.xs, s.end)

    def optimizer(self, params: list, lr: float) -> PlainSGD:
        """The tick's SGD; M2O sets its angle-conformal factors (``scales``) every tick."""
        return PlainSGD(params, lr)


class M2M(Kind):
    name = "m2m"
    corrects_variance = True
    ends_at_end_mode = True

    def destination(self, s, xs):
        return s.unit_ends


class ToVS(Kind):
    name = "to_vs"

    def destination(self, s, xs):  # radial projection onto the reference sphere, recomputed every tick
        factor = s.end_norm[s.unit_index] / distances(xs, None).clamp_min(1e-30)
        return torch._foreach_mul(xs, list(factor.unbind()))

    def layer_distances(self, s):
        return (distances(s.xs, None) - s.end_norm).abs()


class M2O(Kind):
    name = "m2o"
    conformal_lr = True
    moves_norm_layers = False
    fraction_only_ok = False
    sphere_measure = "variance"

    def destination(self, s, xs):
        return None

    def sphere_ratio(self, s, xs, idx):
        target = s.target_var[idx]
        ratio = torch.stack([variance(x) for x in xs]) / target.clamp_min(1e-30)
        return ratio, ratio - 1, target

    def reached(self, s, xs, idx):
        return bool((torch.stack([variance(x) for x in xs]) <= s.target_var[idx]).all())

    def tolerance(self, cfg):
        return None

    def layer_distances(self, s):
        return distances(s.xs, None)


KINDS = {k.name: k for k in (M2M(), ToVS(), M2O())}
