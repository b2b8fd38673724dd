"""The per-tick loss threshold actually used: the configured value, raised to follow the endpoints.

A mode trained with other hyperparameters (weight decay, a shorter schedule) often has a higher
training loss than the configured ``loss_threshold``. Training inside each tick would then push the
path toward loss levels the end mode itself does not reach and pull it away from that mode. So the
threshold used is never below ``loss_floor_factor`` times the larger of the endpoints' own train
losses. The values used are recorded in run.json (``loss_thresholds``) and reused on resume.
"""
import math
from collections.abc import Callable

from .config import TrainSpec
from .modefile import Mode


def endpoint_train_loss(mode: Mode, evaluate: Callable[[Mode], float]) -> float:
    """The mode's own train loss: from its metadata (``metrics.train_loss``), else ``evaluate(mode)``."""
    value = mode.meta.metrics.get("train_loss")
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return float(evaluate(mode))


def threshold_used(spec: TrainSpec, endpoint_loss: float) -> float:
    """max(loss_threshold, loss_floor_factor x endpoint_loss); a factor of 0 keeps loss_threshold."""
    return max(spec.loss_threshold, spec.loss_floor_factor * endpoint_loss)


def threshold_record(spec: TrainSpec, endpoint_loss: float) -> dict:
    """What run.json's ``loss_thresholds`` holds for one TrainSpec."""
    return {"configured": spec.loss_threshold, "loss_floor_factor": spec.loss_floor_factor,
            "endpoint_train_loss": endpoint_loss, "used": threshold_used(spec, endpoint_loss)}
