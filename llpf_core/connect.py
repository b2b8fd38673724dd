"""LLPF as a path method: the tick of M2M, M2O and to_vs searches, and cross-sphere runs.

``LLPF.advance`` is one tick and reads like docs/algorithm.md, M2M: at a phase's first tick choose the
moved layers; move them a little toward the destination; correct each layer's variance (M2M); set the
angle-conformal learning rates (M2O); train briefly; correct again (M2M). The run's stages and phases
are its schedule (llpf/schedule.py); what differs between M2M, M2O and to_vs lives with each kind
(llpf/kinds.py). The driver (driver.py) evaluates, logs, saves and checkpoints the points it reaches.
"""
import torch

from .flow import match_layers, norm_layer_names
from .geometry import VarianceCorrection, angle_conformal_lr, distances, geodesic, move_, variance
from .llpf.schedule import Stage, plan, train_specs
from .methods.base import Method, MethodContext, Step
from .modefile import Mode
from .readers import check_schema
from .registry import build_model
from .runfolder import CHECKPOINT_FILE
from .thresholds import endpoint_train_loss, threshold_record
from .train import PlainSGD, TickTraining, train_until

# The LLPF state a checkpoint's info holds, checked before it is used (the driver checks its own keys).
CHECKPOINT_INFO = {"stage_index": int, "stage_start": int, "phase_index": int, "dist0": float}


class LLPF(Method):
    """The state of one LLPF search while it runs."""
    walks = True

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        cfg, start, end, device = ctx.cfg, ctx.start, ctx.end, ctx.device
        self.cfg, self.device = cfg, device
        self.model = build_model(start.meta.model, **start.meta.model_kwargs).to(device)
        self.model.load_state_dict(start.model.state_dict())
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.params = dict(self.model.named_parameters())
        self.names = list(self.params)
        self.index = {n: i for i, n in enumerate(self.names)}
        # The hot path works on these lists with fused multi-tensor ops; all are views of (or copies
        # beside) the model's own tensors, which every in-place update keeps in place.
        self.xs = [p.data for p in self.params.values()]
        self.state = self.model.state_dict()
        self.norm_names = norm_layer_names(self.model)
        self.start_list = [x.clone() for x in self.xs]
        # In the model's memory format, so the fused ops over (point, end) pairs stay on the fast path.
        self.end_state = None if end is None else {k: self._like_model(v.to(device))
                                                   for k, v in end.model.state_dict().items()}
        self.end = None if end is None else [self.end_state[n] for n in self.names]
        self.end_norm = None if end is None else distances(self.end, None)
        self.end_var = None if end is None else torch.stack([variance(v) for v in self.end])
        self.state_names = list(self.state)
        for i, p in enumerate(cfg.phases):  # every pattern must match a layer: a user error otherwise
            self._moved_names(p.layers, f"phases.{i}.layers")

        thresholds = ctx.thresholds
        if thresholds is None:  # a new run: follow the endpoints' own train losses
            def evaluate(mode: Mode) -> float:  # from the copies already on the device, in its layout
                return ctx.evaluator.evaluate(self.state if mode is start else self.end_state)["train_loss"]
            loss = max(endpoint_train_loss(m, evaluate) for m in (start, end) if m is not None)
            records = {k: threshold_record(spec, loss) for k, spec in train_specs(cfg).items()}
            ctx.record(loss_thresholds=records)
            thresholds = {k: r["used"] for k, r in records.items()}
        self.stages: list[Stage] = plan(cfg, end is not None, thresholds)
        # The whole-model distance leaves out what never moves (norm layers in M2O).
        moves_norms = self.stages[-1].kind.moves_norm_layers
        self.tracked = torch.tensor([moves_norms or n not in self.norm_names for n in self.names], device=device)

        # Set per stage and phase by _begin_stage / _begin_phase, or restored from a checkpoint.
        self.stage_index, self.stage_start, self.phase_index = 0, 0, -1
        self.start_var = torch.zeros(len(self.names), device=device)
        self.target_var = self.start_var  # per layer, in the order of self.names
        self.units: list[list[str]] = []
        self.moved_list: list[int] = []  # the phase's moved layers' indices in self.names
        self.moved_index = torch.zeros(0, dtype=torch.long, device=device)
        self.unit_names: list[str] = []  # the moved layers, unit after unit
        self.unit_index = torch.zeros(0, dtype=torch.long, device=device)  # their indices in self.names
        self.unit_of = torch.zeros(0, dtype=torch.long, device=device)  # unit of each of them
        self.unit_xs: list[torch.Tensor] = []
        self.unit_ends: list[torch.Tensor] | None = None
        self.c_len = torch.zeros(0, device=device)
        self.fraction_only = False  # the phase moves by step_a alone (no step_f, step_c or clamp at work)
        self.optimizer: PlainSGD | None = None
        self.stream = None
        self.dist0 = 1.0
        self.layer_dist0 = torch.ones(len(self.names), device=device)
        self.dists = self.layer_dist0  # per-layer distances at the current point, as last logged
        self.correction: VarianceCorrection | None = None  # of the phase's scope
        self.sphere_names: list[str] = []
        self.sphere_list: list[int] = []  # their indices in self.names
        self.sphere_index = torch.zeros(0, dtype=torch.long, device=device)
        self.sphere_checked: tuple = (None, False)  # ((stage index, tick), on the sphere)
        self.conformal: list[bool] | None = None  # M2O: the layers with angle-conformal rates, per stage

    def _like_model(self, v: torch.Tensor) -> torch.Tensor:
        """``v`` in the model's memory format (channels_last applies to 4-D tensors only)."""
        return v.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last and v.dim() == 4 else v

    @property
    def total(self) -> int:
        return sum(s.ticks for s in self.stages)

    # --- the tick ----------------------------------------------------------------------------------

    def begin(self) -> Step:
        """Tick 0 is the start mode itself."""
        self._begin_stage()
        with torch.no_grad():
            dists = self._layer_distances()
        self.layer_dist0 = torch.where(dists > 0, dists, torch.ones_like(dists))
        self.dist0 = max((dists.square() * self.tracked).sum().sqrt().item(), 1e-30)
        return Step(self._row(None))

    def advance(self) -> Step:
        targets = self.before_training()
        training = train_until(self.model, self.optimizer, self.stream, self.stages[self.stage_index].train,
                               self.cfg.dtype, self.ctx.interrupted)
        return self.after_training(training, targets)

    def before_training(self) -> torch.Tensor | None:
        """The tick up to its training: the phase's set-up, the move, the first variance correction (M2M)
        and the angle-conformal rates (M2O). Returns the tick's variance targets, for ``after_training``.
        The batched engine (batched.py) trains many searches' models together between the two halves."""
        stage = self.stages[self.stage_index]
        phase_index = stage.phase_at(self.progress - self.stage_start)
        if phase_index != self.phase_index:
            self._begin_phase(phase_index)
        phase, kind = stage.phases[phase_index], stage.kind
        with torch.no_grad():
            targets = self._variance_targets() if kind.corrects_variance else None
            self._move(stage, phase)
            if kind.corrects_variance:
                self.correction(targets)
            if kind.conformal_lr:
                self._set_conformal_rates()
        return targets

    def after_training(self, training: TickTraining, targets: torch.Tensor | None) -> Step:
        """The tick after its training: the second variance correction (M2M), the stop rule, the row."""
        stage = self.stages[self.stage_index]
        if stage.kind.corrects_variance:
            with torch.no_grad():
                self.correction(targets)
        self.progress += 1
        limit = self.cfg.stop_when_loss_exceeds
        exceeded = limit is not None and training.loss_rolling > limit
        last = exceeded or self.progress - self.stage_start >= stage.ticks or (stage.to_sphere and self._on_sphere())
        return Step(self._row(training), force_eval=last, stopped_early=(
            f"rolling train loss {training.loss_rolling:.4g} exceeded {limit:g} at tick {self.progress}"
            if exceeded else None))

    def done(self) -> bool:
        """Advance through stage boundaries; True once the last stage is done."""
        while self.stage_index < len(self.stages):
            stage = self.stages[self.stage_index]
            if not (self.progress - self.stage_start >= stage.ticks or (stage.to_sphere and self._on_sphere())):
                return False
            if stage.to_sphere:
                self._record_sphere(stage)
            if self.stage_index + 1 == len(self.stages):
                return True
            self.ctx.mark_point()  # stage boundaries are always saved
            self.stage_index += 1
            self.stage_start = self.progress
            self._begin_stage()
        return True

    def _move(self, stage: Stage, phase) -> None:
        """Move the phase's layers a step toward their destination (M2O: only layers not yet on the
        end's sphere, decision 6)."""
        xs, kind = self.unit_xs, stage.kind
        if self.fraction_only:  # L = step_a ||d|| in every unit: the move is one fused lerp
            torch._foreach_lerp_(xs, kind.destination(self, xs), phase.step_a)
            return
        active = None
        if stage.to_sphere and not kind.moves_norm_layers:  # M2O onto the end's sphere
            below = torch.stack([variance(x) for x in xs]) <= self.target_var[self.unit_index]
            active = torch.zeros(len(self.units), device=self.device).index_add_(
                0, self.unit_of, (~below).float()) > 0
        move_(xs, kind.destination(self, xs), phase.step_a, phase.step_f, self.c_len, self.cfg.clamp_step,
              self.unit_of, active)

    def _set_conformal_rates(self) -> None:
        """M2O: each weight's learning rate follows its variance relative to the stage's start (section 2)."""
        if self.conformal is None:  # fixed for the stage: its start variances do not change
            self.conformal = [("weight" in n and n not in self.norm_names and var0)
                              for n, var0 in zip(self.names, (self.start_var > 0).tolist())]
        var_now = torch.stack([variance(x) for x in self.xs])
        ratios = angle_conformal_lr(1.0, var_now, self.start_var.clamp_min(1e-30), self.cfg.lr_policy).tolist()
        self.optimizer.scales = [r if c else 1.0 for r, c in zip(ratios, self.conformal)]

    def _variance_targets(self) -> torch.Tensor:
        """This tick's variance targets for the layers in the correction's scope.

        Decision 8 (``blend``): each layer's target moves from the start's variance to the end's in
        proportion to the distance it has covered, as measured at the start of the tick; both of the
        tick's corrections aim at the same sphere.
        """
        targets = self.target_var
        if self.cfg.variance_target == "blend" and not self.stages[self.stage_index].variance_to_end:
            progress = (1 - self.dists / self.layer_dist0).clamp_(0, 1)
            targets = torch.lerp(self.target_var, self.end_var, progress)
        return targets if self.cfg.variance_scope == "all" else targets[self.moved_index]

    # --- stage and phase set-up --------------------------------------------------------------------

    def _begin_stage(self) -> None:
        stage = self.stages[self.stage_index]
        self.phase_index = -1
        # Targets of variance correction and angle-conformal rates: the stage's start point (A2).
        self.start_var = torch.stack([variance(x) for x in self.xs])
        self.target_var = self.start_var
        if stage.to_sphere:  # the layers that must reach the end's sphere: every phase's moved ones
            self.sphere_names = sorted({n for p in stage.phases for n in self._moved_names(p.layers, "layers")
                                        if stage.kind.moves_norm_layers or n not in self.norm_names})
            self.sphere_list = [self.index[n] for n in self.sphere_names]
            self.sphere_index = torch.tensor(self.sphere_list, dtype=torch.long, device=self.device)
        # The bridge's targets are the end's sphere (variance_rel shows the approach). After the bridge,
        # the start point is on that sphere only up to bridge.tolerance, so M2M targets it exactly.
        if stage.to_sphere or stage.variance_to_end:
            self.target_var = self.end_var
        self.conformal = None  # set on the stage's first tick, from its start variances
        self.optimizer = stage.kind.optimizer([self.params[n] for n in self.names], stage.train.lr)
        self.stream = self.ctx.batches(stage.train.batch_size, self.cfg.channels_last)

    def _begin_phase(self, index: int, c_len: torch.Tensor | None = None) -> None:
        """Choose the moved layers and fix this phase's step_c lengths at its start (A6).

        On resume, ``c_len`` comes from the checkpoint: it was measured at the phase's real start.
        """
        self.phase_index = index
        stage = self.stages[self.stage_index]
        phase = stage.phases[index]
        moved = self._moved_names(phase.layers, f"phases.{index}.layers")
        if not stage.kind.moves_norm_layers:
            moved = [n for n in moved if n not in self.norm_names]
        moved_set = set(moved)
        self.moved_list = [i for i, n in enumerate(self.names) if n in moved_set]
        self.moved_index = torch.tensor(self.moved_list, dtype=torch.long, device=self.device)
        self.units = self._units(moved)
        self.unit_names = [n for u in self.units for n in u]
        self.unit_index = torch.tensor([self.index[n] for n in self.unit_names], dtype=torch.long,
                                       device=self.device)
        self.unit_of = torch.tensor([i for i, u in enumerate(self.units) for _ in u], dtype=torch.long,
                                    device=self.device)
        self.unit_xs = [self.xs[self.index[n]] for n in self.unit_names]
        self.unit_ends = None if self.end is None else [self.end[self.index[n]] for n in self.unit_names]
        scope = self.xs if self.cfg.variance_scope == "all" else [self.xs[i] for i in self.moved_list]
        self.correction = VarianceCorrection(scope, self.cfg.variance_eps)
        self.fraction_only = stage.kind.fraction_only_ok and not phase.step_f and not phase.step_c and (
            phase.step_a <= 1 or not self.cfg.clamp_step)
        if c_len is not None:
            self.c_len = c_len
        elif phase.step_c:  # only M2M has step_c (validate)
            self.c_len = torch.stack([phase.step_c * geodesic(
                torch.cat([self.params[n].detach().flatten() for n in u]),
                torch.cat([self.end[self.index[n]].flatten() for n in u])) for u in self.units])
        else:
            self.c_len = torch.zeros(len(self.units), device=self.device)
        if c_len is None and self.progress > 0:
            self.ctx.mark_point()  # phase boundaries are always saved

    def _moved_names(self, patterns: list[str], where: str) -> list[str]:
        """Parameters matched by ``patterns``. Patterns may also name buffers (a follow_data_flow
        group lists a BatchNorm's running statistics), but buffers are never moved."""
        params = set(self.names)
        return [n for n in match_layers(patterns, self.state_names, where) if n in params]

    def _units(self, moved: list[str]) -> list[list[str]]:
        """Moved layers as move units; with merge_bias, X.weight and X.bias form one unit."""
        moved_set, units, done = set(moved), [], set()
        for n in moved:
            if n in done:
                continue
            if self.cfg.merge_bias and n.endswith(".weight") and n[:-6] + "bias" in moved_set:
                units.append([n, n[:-6] + "bias"])
                done.update(units[-1])
            elif self.cfg.merge_bias and n.endswith(".bias") and n[:-4] + "weight" in moved_set:
                continue  # joined its weight above
            else:
                units.append([n])
                done.add(n)
        return units

    # --- the end's sphere ----------------------------------------------------------------------------

    def _on_sphere(self) -> bool:
        """Every moved layer has reached the end mode's sphere (decision 6); checked once per tick."""
        if self.sphere_checked[0] != (self.stage_index, self.progress):
            with torch.no_grad():
                reached = self.stages[self.stage_index].kind.reached(
                    self, [self.xs[i] for i in self.sphere_list], self.sphere_index)
            self.sphere_checked = ((self.stage_index, self.progress), reached)
        return self.sphere_checked[1]

    def _record_sphere(self, stage: Stage) -> None:
        """run.json's ``sphere``: whether the stage that heads for the end's sphere reached it, and
        if not, how far off it ended (the moved layer farthest from it) and why."""
        with torch.no_grad():
            ratio, gap, target = stage.kind.sphere_ratio(self, [self.xs[i] for i in self.sphere_list],
                                                         self.sphere_index)
            gap = torch.where(target > 0, gap, torch.zeros_like(gap))  # a zero end layer counts as reached
            worst = int(gap.argmax())
        layer, ratio = self.sphere_names[worst], float(ratio[worst])
        reached = self._on_sphere()
        ticks = self.progress - self.stage_start
        record = {"stage": stage.kind.name, "ticks": ticks, "reached": reached,
                  "tolerance": stage.kind.tolerance(self.cfg), "farthest_layer": layer, "ratio": ratio}
        if not reached:
            record["note"] = (f"{stage.kind} used all its {ticks} ticks without reaching the end mode's "
                              f"sphere: {layer}'s {stage.kind.sphere_measure} is {ratio:.4g} times the end's. In "
                              f"networks without normalisation layers training pushes the norms back up while the "
                              f"loss is above the threshold; raise the stage's ticks or step_a")
        self.ctx.record(sphere=record)

    # --- what the driver logs, saves and restores -----------------------------------------------------

    def _layer_distances(self) -> torch.Tensor:
        """Per-layer distance to the run's destination (to_vs: to the reference sphere)."""
        return self.stages[-1].kind.layer_distances(self)

    def _row(self, training: TickTraining | None) -> dict:
        stage = self.stages[self.stage_index]
        with torch.no_grad():
            dists = self.dists = self._layer_distances()
        distance = (dists.square() * self.tracked).sum().sqrt().item()
        return {"tick": self.progress, "stage": stage.kind.name, "phase": f"{stage.kind}:{max(self.phase_index, 0)}",
                "iterations": training.iterations if training else 0,
                "train_loss_rolling": training.loss_rolling if training else None,
                "train_acc_rolling": training.acc_rolling if training else None,
                "distance": distance, "distance_rel": distance / self.dist0}

    def current(self) -> dict[str, torch.Tensor]:
        return self.state

    def baseline(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None:
        return (self.state, self.end_state) if self.end_state is not None and self.stages[-1].kind.ends_at_end_mode \
            else None

    def layer_rows(self, tick: int) -> list[dict]:
        with torch.no_grad():
            var = torch.stack([variance(x) for x in self.xs])
            norms = distances(self.xs, None)
            dots = torch.stack([torch.dot(x.flatten().float(), s.flatten().float())
                                for x, s in zip(self.xs, self.start_list)])
            denom = norms * distances(self.start_list, None)
            cos = torch.where(denom > 0, dots / denom.clamp_min(1e-30), torch.zeros_like(denom))
            positive = (self.target_var > 0).float()
            table = torch.stack([self.dists, self.dists / self.layer_dist0, var, var / self.target_var, norms, cos,
                                 positive]).T.tolist()
        return [{"tick": tick, "layer": n, "distance": d, "distance_rel": rel, "variance": v,
                 "variance_rel": v_rel if target else None, "norm": norm, "cosine_to_start": c}
                for n, (d, rel, v, v_rel, norm, c, target) in zip(self.names, table)]

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = {f"state/{k}": v for k, v in self.state.items()}
        tensors.update({f"start_var/{n}": v.clone() for n, v in zip(self.names, self.start_var)})
        tensors.update({f"target_var/{n}": v.clone() for n, v in zip(self.names, self.target_var)})
        tensors.update({"c_len": self.c_len, "layer_dist0": self.layer_dist0})
        return tensors, {"stage_index": self.stage_index, "stage_start": self.stage_start,
                         "phase_index": self.phase_index, "dist0": self.dist0}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], info: dict) -> None:
        check_schema(info, CHECKPOINT_INFO, self.ctx.folder / CHECKPOINT_FILE, where="llpf.checkpoint")
        super().load_state_dict(tensors, info)
        self.stage_index, self.stage_start = info["stage_index"], info["stage_start"]
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("state/")})
        self._begin_stage()
        self.start_var = torch.stack([tensors[f"start_var/{n}"] for n in self.names]).to(self.device)
        self.target_var = torch.stack([tensors[f"target_var/{n}"] for n in self.names]).to(self.device)
        self.conformal = None  # from the restored start variances, not those _begin_stage measured
        if info["phase_index"] >= 0:
            self._begin_phase(info["phase_index"], tensors["c_len"].to(self.device))
        self.dist0, self.layer_dist0 = info["dist0"], tensors["layer_dist0"].to(self.device)
        with torch.no_grad():
            self.dists = self._layer_distances()

