"""An LLPF run's schedule: its stages (a cross-sphere run: the bridge onto the end mode's sphere, then
M2M) and each stage's phases (from a tick on, move these layers with these step sizes)."""
from dataclasses import dataclass, replace

from ..config import Phase, SearchConfig, TrainSpec
from .kinds import KINDS, Kind


@dataclass
class Stage:
    kind: Kind
    ticks: int  # at most
    phases: list[Phase]
    train: TrainSpec
    to_sphere: bool  # ends as soon as every moved layer is on the end mode's sphere
    variance_to_end: bool = False  # M2M after a bridge: correct toward the end mode's variances

    def phase_at(self, local_tick: int) -> int:
        """The index of the phase that tick ``local_tick`` of the stage belongs to."""
        return max(i for i, p in enumerate(self.phases) if p.start_tick <= local_tick)


def train_specs(cfg: SearchConfig) -> dict[str, TrainSpec]:
    """The run's training specs by config key (``train``; ``bridge.train`` for cross_sphere)."""
    specs = {"train": cfg.train}
    if cfg.algorithm == "cross_sphere":
        specs["bridge.train"] = cfg.bridge.train
    return specs


def plan(cfg: SearchConfig, has_end: bool, thresholds: dict[str, float]) -> list[Stage]:
    """The run's stages, each training with the loss threshold used for it (``thresholds``, by spec)."""
    train = replace(cfg.train, loss_threshold=thresholds["train"])
    if cfg.algorithm == "cross_sphere":
        b = cfg.bridge
        bridge_train = replace(b.train, loss_threshold=thresholds["bridge.train"])
        bridge = Stage(KINDS[b.algorithm], b.ticks, [Phase(0, ["*"], b.step_a, b.step_f)], bridge_train, True)
        return [bridge, Stage(KINDS["m2m"], cfg.ticks, cfg.phases, train, False, variance_to_end=True)]
    to_sphere = cfg.algorithm == "to_vs" or (cfg.algorithm == "m2o" and has_end)
    return [Stage(KINDS[cfg.algorithm], cfg.ticks, cfg.phases, train, to_sphere)]
