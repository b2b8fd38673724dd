"""``run_search``: the LLPF tick loop for M2M, M2O, to_vs and cross-sphere searches.

Each tick follows llpf-algorithm.md 1.4 (M2M) or section 2 (M2O, to_vs):
move a little toward the destination, correct each layer's variance (M2M), set the angle-conformal
learning rates (M2O), train briefly, correct again (M2M), then evaluate and log. A cross-sphere run is
two stages in one run folder: a bridge (to_vs or M2O) onto the end mode's sphere, then M2M.
"""
import hashlib
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from .checks import run_summary
from .config import PATH_METHODS, Phase, SearchConfig, TrainSpec, validate
from .data import load_dataset
from .device import apply_cuda_settings, out_of_memory, out_of_memory_is_user_error, resolve_device, warn
from .errors import UserError
from .evaluate import Evaluator, fixed_subset
from .flow import match_layers, norm_layer_names
from .geometry import VarianceCorrection, angle_conformal_lr, distances, geodesic, move_, variance
from .modefile import Mode, ModeMeta, load_mode, versions
from .pathfile import llpf_path
from .registry import build_model
from .runfolder import Run, RunWriter, load_run, read_run_json
from .thresholds import endpoint_train_loss, threshold_record
from .train import BatchStream, PerParameterSGD, train_until

ORIGIN = "origin"


@dataclass
class TickEvent:
    """What one finished tick produced; the rows are exactly those written to the run folder."""
    run: str
    tick: int
    total_ticks: int  # planned ticks (an upper bound when a stage can end early)
    stage: str
    phase: str
    metrics: dict
    layers: list[dict] = field(default_factory=list)
    continuity: list[dict] = field(default_factory=list)


@dataclass
class _Stage:
    kind: str  # m2m | m2o | to_vs
    ticks: int  # at most
    phases: list[Phase]
    train: TrainSpec
    to_sphere: bool  # ends as soon as every moved layer is on the end mode's sphere
    variance_to_end: bool = False  # M2M after a bridge: correct toward the end mode's variances


def _stages(cfg: SearchConfig, has_end: bool, thresholds: dict[str, float]) -> list[_Stage]:
    """The run's stages, each training with the loss threshold used for it (``thresholds``, by spec:
    ``train``, ``bridge.train``)."""
    train = replace(cfg.train, loss_threshold=thresholds["train"])
    if cfg.algorithm == "cross_sphere":
        b = cfg.bridge
        bridge_train = replace(b.train, loss_threshold=thresholds["bridge.train"])
        bridge = _Stage(b.algorithm, b.ticks, [Phase(0, ["*"], b.step_a, b.step_f)], bridge_train, True)
        return [bridge, _Stage("m2m", cfg.ticks, cfg.phases, train, False, variance_to_end=True)]
    to_sphere = cfg.algorithm == "to_vs" or (cfg.algorithm == "m2o" and has_end)
    return [_Stage(cfg.algorithm, cfg.ticks, cfg.phases, train, to_sphere)]


def _train_specs(cfg: SearchConfig) -> dict[str, TrainSpec]:
    specs = {"train": cfg.train}
    if cfg.algorithm == "cross_sphere":
        specs["bridge.train"] = cfg.bridge.train
    return specs


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _sha256_or_none(path: str | None) -> str | None:
    return _sha256(Path(path)) if path and Path(path).is_file() else None


def _endpoint(mode: Mode | None) -> dict | None:
    if mode is None:
        return None
    # absolute (symlinks kept), so that later readers (landscape, checks, the dashboard) find them from any cwd
    return {"path": str(Path(mode.path).absolute()) if mode.path else None,
            "sha256": _sha256(mode.path) if mode.path else None,
            "meta": {k: v for k, v in asdict(mode.meta).items() if k != "extra"}}


def _as_mode(x: Mode | str | Path | None, what: str) -> Mode | None:
    if x is None or (isinstance(x, str) and x == ORIGIN):
        return None
    return x if isinstance(x, Mode) else load_mode(x, f"{what} mode file")


def check_compatible(start: Mode, end: Mode | None, cfg: SearchConfig) -> None:
    """Refuse pairs that cannot be connected, before any work starts."""
    needs_end = cfg.algorithm in ("m2m", "to_vs", "cross_sphere")
    if needs_end and end is None:
        raise UserError(f"algorithm {cfg.algorithm} needs an end mode, not 'origin'")
    if end is None:
        return
    a, b = start.meta, end.meta
    if a.model != b.model or a.model_kwargs != b.model_kwargs:
        raise UserError(f"the modes have different architectures: {a.model} {a.model_kwargs} vs "
                        f"{b.model} {b.model_kwargs}; connect two modes of the same model")
    if a.dataset != b.dataset:
        raise UserError(f"the modes were trained on different datasets ({a.dataset} vs {b.dataset})")
    if start.path and end.path and _sha256(start.path) == _sha256(end.path):
        raise UserError("start and end are the same mode; pick two independently trained modes")


def run_search(start: Mode | str | Path | None, end: Mode | str | Path | None,
               config: SearchConfig | None, out_dir: str | Path, *,
               on_tick: Callable[[TickEvent], None] | None = None,
               stop_event: threading.Event | None = None, pause_event: threading.Event | None = None,
               resume: bool = False, data_root: str | Path | None = None,
               device: str | None = None) -> Run:
    """Run (or resume) a path search, blocking until it finishes or ``stop_event`` is set.

    A stop or a pause ends the current tick early (within ``train.INTERRUPT_EVERY`` SGD steps).
    While ``pause_event`` is set, the search checkpoints at the end of that tick, marks the run
    ``paused`` and waits (holding its memory) until the event is cleared or ``stop_event`` is set.

    ``end`` is a mode, or ``"origin"``/None for M2O. With ``resume=True`` and an existing run folder,
    the run continues from its checkpoint with the config stored in run.json (``start``, ``end`` and
    ``config`` may then be None). ``device`` replaces the config's device (also on resume; a checkpoint
    continues only on the device type that wrote it). Returns the run folder, read back.
    """
    out_dir = Path(out_dir)
    exists = (out_dir / "run.json").exists()
    if exists and not resume:
        raise UserError(f"run folder {out_dir} already exists; pass --resume to continue it or choose "
                        f"another --out")
    writer = RunWriter(out_dir)
    recorded = None  # the loss thresholds a resumed run used
    checkpoint = None
    if exists:
        info = read_run_json(out_dir)
        if info["status"] == "finished":
            return load_run(out_dir)
        cfg = SearchConfig.from_dict(info["config"])
        # Runs from before loss_floor_factor used their loss_threshold as given.
        recorded = {k: v["used"] for k, v in info["loss_thresholds"].items()} if "loss_thresholds" in info \
            else {k: spec.loss_threshold for k, spec in _train_specs(cfg).items()}
        for what in ("start", "end"):
            stored = info[what]
            if stored and stored["sha256"] and _sha256_or_none(stored["path"]) != stored["sha256"]:
                raise UserError(f"--resume: the {what} mode file {stored['path']} is missing or has changed "
                                f"since the run started; restore it to continue")
        start_mode = load_mode(info["start"]["path"], "start mode file")
        end_mode = load_mode(info["end"]["path"], "end mode file") if info["end"] else None
        for given, stored, what in ((start, info["start"], "start"), (end, info["end"], "end")):
            given_mode = _as_mode(given, what) if given is not None else None
            if given_mode is not None and given_mode.path and stored and \
                    _sha256(given_mode.path) != stored["sha256"]:
                raise UserError(f"--resume: the {what} mode differs from the one this run started with "
                                f"({stored['path']})")
        if device is not None:
            cfg = replace(cfg, device=device)
        checkpoint = writer.load_checkpoint()
        if checkpoint is not None:
            _check_device_type(checkpoint[1], info, cfg.device)
        writer.reopen()
    else:
        if config is None:
            raise UserError("run_search needs a config for a new run")
        cfg = config if device is None else replace(config, device=device)
        start_mode, end_mode = _as_mode(start, "start"), _as_mode(end, "end")
        if start_mode is None:
            raise UserError("the start mode cannot be 'origin'")
    validate(cfg)
    check_compatible(start_mode, end_mode, cfg)
    if cfg.algorithm in PATH_METHODS:
        if end_mode is None:
            raise UserError(f"algorithm {cfg.algorithm} needs an end mode, not 'origin'")
        from .methods.common import run_method
        return run_method(start_mode, end_mode, cfg, out_dir,
                          {"start": _endpoint(start_mode), "end": _endpoint(end_mode)}, data_root, stop_event,
                          resume=exists)
    # Set-up puts the model, the data and the evaluator on the device, so it can run out of memory;
    # nothing is written yet, so a new run can start again in the same folder.
    with out_of_memory_is_user_error(f"setting up the search on {cfg.device}: {_OOM_HINT}"):
        search = _Search(writer, cfg, start_mode, end_mode, data_root, on_tick, stop_event, pause_event,
                         recorded)
    if not exists:
        writer.create({"name": out_dir.name, "algorithm": cfg.algorithm,
                       "start": _endpoint(start_mode), "end": _endpoint(end_mode),
                       "config": cfg.to_dict(), "loss_thresholds": search.threshold_records,
                       "device_used": str(search.device), "versions": versions()})
    try:
        search.run(checkpoint)
    except BaseException as e:
        oom = out_of_memory(e, f"searching on {search.device}: {_OOM_HINT}")
        try:
            if isinstance(e, KeyboardInterrupt):
                writer.update(status="stopped", error=None)
            else:
                message = str(oom or e) if isinstance(oom or e, UserError) else f"{type(e).__name__}: {e}"
                writer.update(status="failed", error=message)
        except UserError:
            pass  # run.json cannot be written either (disk full, no permission): the original error counts
        if oom:
            raise oom from None
        raise
    finally:
        writer.close()
    return load_run(out_dir)


_OOM_HINT = ("start a new run with smaller settings, e.g. --set train.batch_size=N (also eval_samples, "
             "continuity.samples); --resume keeps the stored config")


def _check_device_type(checkpoint_info: dict, run_info: dict, device: str) -> None:
    """A checkpoint continues only on the device type that wrote it: the batch stream's generator
    state (and the CUDA random state) belongs to one device type."""
    written = checkpoint_info.get("device_type") or torch.device(run_info["device_used"]).type
    now = resolve_device(device)
    if now.type != written:
        raise UserError(f"--resume: this run's checkpoint was written on {written} and cannot continue on "
                        f"{now} (device {device!r}): its random state belongs to {written}; resume with "
                        f"--device {written} on a machine that has one, or start a new run")


class _Search:
    """The state of one search while it runs. ``run`` reads like llpf-algorithm.md 1.4."""

    def __init__(self, writer: RunWriter, cfg: SearchConfig, start: Mode, end: Mode | None,
                 data_root, on_tick, stop_event, pause_event=None,
                 thresholds: dict[str, float] | None = None):
        self.writer, self.cfg, self.on_tick = writer, cfg, on_tick
        self.stop_event = stop_event or threading.Event()
        self.pause_event = pause_event or threading.Event()
        self.device = resolve_device(cfg.device)
        apply_cuda_settings(self.device, cfg.tf32, cfg.cudnn_benchmark)
        if self.device.type != "cuda" and (cfg.tf32 or cfg.cudnn_benchmark):
            warn(f"tf32 and cudnn_benchmark apply on CUDA only; the search runs on {self.device} without them")
        self.meta = start.meta
        self.model = build_model(start.meta.model, **start.meta.model_kwargs).to(self.device)
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
        self.end_state = None if end is None else {k: self._like_model(v.to(self.device))
                                                   for k, v in end.model.state_dict().items()}
        self.end = None if end is None else [self.end_state[n] for n in self.names]
        self.end_norm = None if end is None else distances(self.end, None)
        self.end_var = None if end is None else torch.stack([variance(v) for v in self.end])
        self.state_names = list(self.state)
        for i, p in enumerate(cfg.phases):  # every pattern must match a layer: a user error otherwise
            self._moved_names(p.layers, f"phases.{i}.layers")

        self.train_data = load_dataset(start.meta.dataset, "train", data_root).to(self.device)
        self.test_data = load_dataset(start.meta.dataset, "test", data_root).to(self.device)
        fits = self.train_data.model_kwargs()
        for key in ("num_classes", "in_channels"):
            if key in start.meta.model_kwargs and start.meta.model_kwargs[key] != fits[key]:
                raise UserError(f"the start mode's {key} is {start.meta.model_kwargs[key]} but {start.meta.dataset} "
                                f"has {fits[key]}; use a mode trained on {start.meta.dataset}")
        scratch = build_model(start.meta.model, **start.meta.model_kwargs).to(self.device)
        if cfg.channels_last:  # evaluation in the training's layout: LeNet-5's CPU pooling is 2x faster in it
            scratch.to(memory_format=torch.channels_last)
        self.evaluator = Evaluator(scratch, self.train_data, self.test_data, cfg.eval_samples, cfg.seed,
                                   cfg.bn_recal_batches, cfg.train.batch_size)
        self.continuity_idx = fixed_subset(len(self.train_data), cfg.continuity.samples, cfg.seed + 4,
                                           self.device)
        self.threshold_records: dict[str, dict] | None = None  # run.json's loss_thresholds (new runs)
        if thresholds is None:  # a new run: follow the endpoints' own train losses
            def evaluate(mode: Mode) -> float:  # from the copies already on the device, in its layout
                return self.evaluator.evaluate(self.state if mode is start else self.end_state)["train_loss"]
            loss = max(endpoint_train_loss(m, evaluate) for m in (start, end) if m is not None)
            self.threshold_records = {k: threshold_record(spec, loss) for k, spec in _train_specs(cfg).items()}
            thresholds = {k: r["used"] for k, r in self.threshold_records.items()}
        self.stages = _stages(cfg, end is not None, thresholds)
        self.generator = torch.Generator(self.device).manual_seed(cfg.seed)
        self.total_ticks = sum(s.ticks for s in self.stages)
        # The whole-model distance leaves out what never moves: norm layers in M2O.
        self.tracked = torch.tensor([self.stages[-1].kind != "m2o" or n not in self.norm_names
                                     for n in self.names], device=self.device)

        # Set per stage and phase by _begin_stage / _begin_phase, or restored from a checkpoint.
        self.tick = 0
        self.stage_index, self.stage_start, self.phase_index = 0, 0, -1
        self.start_var = torch.zeros(len(self.names), device=self.device)
        self.target_var = self.start_var  # per layer, in the order of self.names
        self.units: list[list[str]] = []
        self.unit_names: list[str] = []  # the moved layers, unit after unit
        self.unit_of = torch.zeros(0, dtype=torch.long, device=self.device)  # unit of each of them
        self.c_len = torch.zeros(0, device=self.device)
        self.fraction_only = False  # the phase moves by step_a alone (no step_f, step_c or clamp at work)
        self.optimizer: torch.optim.Optimizer | None = None
        self.stream: BatchStream | None = None
        self.dist0 = 1.0
        self.layer_dist0 = torch.ones(len(self.names), device=self.device)
        self.dists = self.layer_dist0  # per-layer distances at the current point, as last logged
        self.correction: VarianceCorrection | None = None  # of the phase's scope
        self.wall_offset = 0.0
        self.last_saved = -1
        self.last_row: dict = {}
        self.sphere_names: list[str] = []
        self.sphere_list: list[int] = []  # their indices in self.names
        self.sphere_index = torch.zeros(0, dtype=torch.long, device=self.device)
        self.sphere_checked: tuple = (None, False)  # ((stage index, tick), on the sphere)
        self.conformal: list[bool] | None = None  # M2O: the layers with angle-conformal rates, per stage

    def _like_model(self, v: torch.Tensor) -> torch.Tensor:
        """``v`` in the model's memory format (channels_last applies to 4-D tensors only)."""
        return v.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last and v.dim() == 4 else v

    # --- the loop --------------------------------------------------------------------------------

    def run(self, checkpoint: tuple[dict[str, torch.Tensor], dict] | None) -> None:
        """From the start, or from ``checkpoint`` (the run folder's, read by run_search)."""
        self.t0 = time.perf_counter()
        if checkpoint is None:
            self.writer.truncate_after(-1)  # a run killed before its first checkpoint starts over
            self._begin()
        else:
            self._restore(*checkpoint)
        self.writer.update(status="running", error=None, device_used=str(self.device))
        while not self._finished():
            stage = self.stages[self.stage_index]
            local = self.tick - self.stage_start
            phase_index = max(i for i, p in enumerate(stage.phases) if p.start_tick <= local)
            if phase_index != self.phase_index:
                self._begin_phase(phase_index)
            prev = {k: v.clone() for k, v in self.state.items()} \
                if self._continuity_due(self.tick + 1) else None
            training = self._step(stage, stage.phases[phase_index])
            self.tick += 1
            limit = self.cfg.stop_when_loss_exceeds
            exceeded = limit is not None and training.loss_rolling > limit
            last = (self.stop_event.is_set() or exceeded or self.tick - self.stage_start >= stage.ticks
                    or (stage.to_sphere and self._on_sphere()))
            self._log(training, prev, force_eval=last)
            if self.stop_event.is_set():
                self._save_point()
                self._checkpoint()
                self.writer.update(status="stopped")
                return
            if exceeded:
                self._save_point()
                self._checkpoint()
                self.writer.update(status="finished", stopped_early=f"rolling train loss "
                                   f"{training.loss_rolling:.4g} exceeded {limit:g} at tick {self.tick}")
                self._summarise()
                return
            if self.pause_event.is_set() and not self._finished():
                if not self._pause():
                    return
            elif self.tick % self.cfg.checkpoint_every == 0:
                self._checkpoint()
        self._save_point()
        self._checkpoint()
        self.writer.update(status="finished")
        self._summarise()

    def _pause(self) -> bool:
        """Checkpoint, mark the run paused and wait. False when a stop came while paused."""
        self._save_point()
        self._checkpoint()
        self.writer.update(status="paused")
        self.wall_offset += time.perf_counter() - self.t0  # paused time is not search time
        self.t0 = time.perf_counter()
        while self.pause_event.is_set() and not self.stop_event.wait(0.1):
            pass
        if self.stop_event.is_set():
            self.writer.update(status="stopped")
            return False
        self.t0 = time.perf_counter()
        self.writer.update(status="running")
        return True

    def _finished(self) -> bool:
        """Advance through stage boundaries; True once the last stage is done."""
        while self.stage_index < len(self.stages):
            stage = self.stages[self.stage_index]
            done = self.tick - self.stage_start >= stage.ticks or (stage.to_sphere and self._on_sphere())
            if not done:
                return False
            if stage.to_sphere:
                self._record_sphere(stage)
            if self.stage_index + 1 == len(self.stages):
                return True
            self._save_point()
            self.stage_index += 1
            self.stage_start = self.tick
            self._begin_stage()
        return True

    def _step(self, stage: _Stage, phase: Phase):
        """One tick: move, correct, (M2O: set learning rates), train, correct."""
        cfg = self.cfg
        with torch.no_grad():
            targets = self._variance_targets() if stage.kind == "m2m" else None
            self._move(stage, phase)
            if stage.kind == "m2m":
                self.correction(targets)
            if stage.kind == "m2o":
                if self.conformal is None:  # fixed for the stage: its start variances do not change
                    self.conformal = [("weight" in n and n not in self.norm_names and var0)
                                      for n, var0 in zip(self.names, (self.start_var > 0).tolist())]
                var_now = torch.stack([variance(x) for x in self.xs])
                ratios = angle_conformal_lr(1.0, var_now, self.start_var.clamp_min(1e-30), cfg.lr_policy).tolist()
                self.optimizer.scales = [r if c else 1.0 for r, c in zip(ratios, self.conformal)]
        training = train_until(self.model, self.optimizer, self.stream, stage.train, cfg.dtype,
                               lambda: self.stop_event.is_set() or self.pause_event.is_set())
        if stage.kind == "m2m":
            with torch.no_grad():
                self.correction(targets)
        return training

    def _move(self, stage: _Stage, phase: Phase) -> None:
        """Move the phase's layers a step toward their destination (M2O: only layers not yet on the
        end's sphere, decision 6)."""
        xs = self._unit_xs
        if self.fraction_only:  # L = step_a ||d|| in every unit: the move is one fused lerp
            torch._foreach_lerp_(xs, self._destination(stage.kind, xs), phase.step_a)
            return
        active = None
        if stage.kind == "m2o" and stage.to_sphere:
            below = torch.stack([variance(x) for x in xs]) <= self.target_var[self._unit_index]
            active = torch.zeros(len(self.units), device=self.device).index_add_(
                0, self.unit_of, (~below).float()) > 0
        move_(xs, self._destination(stage.kind, xs), phase.step_a, phase.step_f, self.c_len,
              self.cfg.clamp_step, self.unit_of, active)

    # --- stage and phase set-up -----------------------------------------------------------------

    def _begin(self) -> None:
        """A new run: tick 0 is the start mode itself; then the baseline and a first checkpoint."""
        torch.manual_seed(self.cfg.seed)  # dropout and other global randomness (decision 7)
        self._begin_stage()
        with torch.no_grad():
            dists = self._layer_distances()
        self.layer_dist0 = torch.where(dists > 0, dists, torch.ones_like(dists))
        self.dist0 = max((dists.square() * self.tracked).sum().sqrt().item(), 1e-30)
        self._log(None, None)
        if self.end is not None and self.cfg.algorithm in ("m2m", "cross_sphere") and self.cfg.baseline_points:
            n = self.cfg.baseline_points
            rows = self.evaluator.line(self.state, self.end_state, [i / (n - 1) for i in range(n)])
            self.writer.write_baseline(rows)
        self._checkpoint()

    def _begin_stage(self) -> None:
        stage = self.stages[self.stage_index]
        self.phase_index = -1
        # Targets of variance correction and angle-conformal rates: the stage's start point (A2).
        self.start_var = torch.stack([variance(x) for x in self.xs])
        self.target_var = self.start_var
        if stage.to_sphere:  # the layers that must reach the end's sphere: every phase's moved ones
            self.sphere_names = sorted({n for p in stage.phases for n in self._moved_names(p.layers, "layers")
                                        if stage.kind != "m2o" or n not in self.norm_names})
            self.sphere_list = [self.index[n] for n in self.sphere_names]
            self.sphere_index = torch.tensor(self.sphere_list, dtype=torch.long, device=self.device)
        # The bridge's targets are the end's sphere (variance_rel shows the approach). After the bridge,
        # the start point is on that sphere only up to bridge.tolerance, so M2M targets it exactly.
        if stage.to_sphere or stage.variance_to_end:
            self.target_var = self.end_var
        params = [self.params[n] for n in self.names]
        self.conformal = None  # set on the stage's first tick, from its start variances
        if stage.kind == "m2o":  # angle-conformal rates: a learning rate per parameter
            self.optimizer = PerParameterSGD(params, lr=stage.train.lr)
        else:
            self.optimizer = torch.optim.SGD(params, lr=stage.train.lr)
        self.stream = BatchStream(self.train_data, stage.train.batch_size, self.generator,
                                  channels_last=self.cfg.channels_last)

    def _begin_phase(self, index: int, c_len: torch.Tensor | None = None) -> None:
        """Choose the moved layers and fix this phase's step_c lengths at its start (A6).

        On resume, ``c_len`` comes from the checkpoint: it was measured at the phase's real start.
        """
        self.phase_index = index
        stage = self.stages[self.stage_index]
        phase = stage.phases[index]
        moved = self._moved_names(phase.layers, f"phases.{index}.layers")
        if stage.kind == "m2o":
            moved = [n for n in moved if n not in self.norm_names]
        self.moved = set(moved)
        self.moved_list = [i for i, n in enumerate(self.names) if n in self.moved]
        self.moved_index = torch.tensor(self.moved_list, dtype=torch.long, device=self.device)
        self.units = self._units(moved)
        self.unit_names = [n for u in self.units for n in u]
        self._unit_index = torch.tensor([self.index[n] for n in self.unit_names], dtype=torch.long,
                                        device=self.device)
        self.unit_of = torch.tensor([i for i, u in enumerate(self.units) for _ in u], dtype=torch.long,
                                    device=self.device)
        self._unit_xs = [self.xs[self.index[n]] for n in self.unit_names]
        self._unit_ends = None if self.end is None else [self.end[self.index[n]] for n in self.unit_names]
        scope = self.xs if self.cfg.variance_scope == "all" else [self.xs[i] for i in self.moved_list]
        self.correction = VarianceCorrection(scope, self.cfg.variance_eps)
        self.fraction_only = stage.kind in ("m2m", "to_vs") and not phase.step_f and not phase.step_c and (
            phase.step_a <= 1 or not self.cfg.clamp_step)
        if c_len is not None:
            self.c_len = c_len
        elif phase.step_c and stage.kind == "m2m":
            self.c_len = torch.stack([phase.step_c * geodesic(
                torch.cat([self.params[n].detach().flatten() for n in u]),
                torch.cat([self.end[self.index[n]].flatten() for n in u])) for u in self.units])
        else:
            self.c_len = torch.zeros(len(self.units), device=self.device)
        if c_len is None and self.tick > 0:
            self._save_point()  # phase boundaries are always saved

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

    # --- destinations, spheres, variance ----------------------------------------------------------

    def _destination(self, kind: str, xs: list[torch.Tensor]) -> list[torch.Tensor] | None:
        """Where the moved layers ``xs`` (self.unit_names) head this tick."""
        if kind == "m2m":
            return self._unit_ends
        if kind == "to_vs":  # radial projection onto the reference sphere, recomputed every tick
            factor = self.end_norm[self._unit_index] / distances(xs, None).clamp_min(1e-30)
            return torch._foreach_mul(xs, list(factor.unbind()))
        return None  # m2o: the origin

    def _on_sphere(self) -> bool:
        """Every moved layer has reached the end mode's sphere (decision 6); checked once per tick."""
        if self.sphere_checked[0] != (self.stage_index, self.tick):
            stage = self.stages[self.stage_index]
            idx = self.sphere_index
            with torch.no_grad():
                xs = [self.xs[i] for i in self.sphere_list]
                if stage.kind == "m2o":
                    reached = torch.stack([variance(x) for x in xs]) <= self.target_var[idx]
                else:
                    end_norm = self.end_norm[idx]
                    reached = ((distances(xs, None) / end_norm - 1).abs() <= self.cfg.bridge.tolerance) | \
                        (end_norm <= 0)
                reached = bool(reached.all())
            self.sphere_checked = ((self.stage_index, self.tick), reached)
        return self.sphere_checked[1]

    def _sphere_gap(self) -> tuple[str, float]:
        """The moved layer farthest from the end's sphere and its ratio to it: norm / end norm
        (M2O: variance / target variance)."""
        stage = self.stages[self.stage_index]
        with torch.no_grad():
            xs = [self.xs[i] for i in self.sphere_list]
            if stage.kind == "m2o":
                target = self.target_var[self.sphere_index]
                ratio = torch.stack([variance(x) for x in xs]) / target.clamp_min(1e-30)
                gap = ratio - 1
            else:
                target = self.end_norm[self.sphere_index]
                ratio = distances(xs, None) / target.clamp_min(1e-30)
                gap = (ratio - 1).abs()
            gap = torch.where(target > 0, gap, torch.zeros_like(gap))  # a zero end layer counts as reached
            worst = int(gap.argmax())
        return self.sphere_names[worst], float(ratio[worst])

    def _record_sphere(self, stage: _Stage) -> None:
        """run.json's ``sphere``: whether the stage that heads for the end's sphere reached it, and
        if not, how far off it ended and why."""
        layer, ratio = self._sphere_gap()
        reached = self._on_sphere()
        ticks = self.tick - self.stage_start
        record = {"stage": stage.kind, "ticks": ticks, "reached": reached,
                  "tolerance": None if stage.kind == "m2o" else self.cfg.bridge.tolerance,
                  "farthest_layer": layer, "ratio": ratio}
        if not reached:
            what = "variance" if stage.kind == "m2o" else "norm"
            record["note"] = (f"{stage.kind} used all its {ticks} ticks without reaching the end mode's "
                              f"sphere: {layer}'s {what} is {ratio:.4g} times the end's. In networks without "
                              f"normalisation layers training pushes the norms back up while the loss is above "
                              f"the threshold; raise the stage's ticks or step_a")
        self.writer.update(sphere=record)

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

    # --- logging ---------------------------------------------------------------------------------

    def _layer_distances(self) -> torch.Tensor:
        """Per-layer distance to the run's destination (to_vs: to the reference sphere)."""
        kind = self.stages[-1].kind
        if kind == "to_vs":
            return (distances(self.xs, None) - self.end_norm).abs()
        return distances(self.xs, None if kind == "m2o" else self.end)

    def _continuity_due(self, tick: int) -> bool:
        c = self.cfg.continuity
        return c.points >= 2 and tick % c.every == 0

    def _log(self, training, prev, force_eval: bool = False) -> None:
        tick = self.tick
        stage = self.stages[self.stage_index]
        phase = f"{stage.kind}:{max(self.phase_index, 0)}"
        with torch.no_grad():
            dists = self.dists = self._layer_distances()
        distance = (dists.square() * self.tracked).sum().sqrt().item()
        row = {"tick": tick, "stage": stage.kind, "phase": phase,
               "iterations": training.iterations if training else 0,
               "train_loss_rolling": training.loss_rolling if training else None,
               "train_acc_rolling": training.acc_rolling if training else None,
               "distance": distance, "distance_rel": distance / self.dist0,
               "wall_s": round(self.wall_offset + time.perf_counter() - self.t0, 4)}
        layers, continuity = [], []
        state = self.state
        if force_eval or tick % self.cfg.eval_every == 0:
            row.update(self.evaluator.evaluate(state))
            layers = self._layer_rows(tick, dists)
        if prev is not None:
            alphas = [i / self.cfg.continuity.points for i in range(1, self.cfg.continuity.points)]
            continuity = [{"tick": tick, **r} for r in
                          self.evaluator.line(prev, state, alphas, self.continuity_idx)]
            row["continuity_max_loss"] = max(r["loss"] for r in continuity)
        self.last_row = row
        self.writer.append("metrics", [row])
        self.writer.append("layers", layers)
        self.writer.append("continuity", continuity)
        if tick == 0 or tick % self.cfg.save_every == 0:
            self._save_point(row)
        if self.on_tick:
            self.on_tick(TickEvent(self.writer.path.name, tick, self.total_ticks, stage.kind, phase,
                                   row, layers, continuity))

    def _layer_rows(self, tick: int, dists: torch.Tensor) -> list[dict]:
        with torch.no_grad():
            var = torch.stack([variance(x) for x in self.xs])
            norms = distances(self.xs, None)
            dots = torch.stack([torch.dot(x.flatten().float(), s.flatten().float())
                                for x, s in zip(self.xs, self.start_list)])
            start_norms = distances(self.start_list, None)
            denom = norms * start_norms
            cos = torch.where(denom > 0, dots / denom.clamp_min(1e-30), torch.zeros_like(denom))
            positive = (self.target_var > 0).float()
            table = torch.stack([dists, dists / self.layer_dist0, var, var / self.target_var, norms, cos,
                                 positive]).T.tolist()
        return [{"tick": tick, "layer": n, "distance": d, "distance_rel": rel, "variance": v,
                 "variance_rel": v_rel if target else None, "norm": norm, "cosine_to_start": c}
                for n, (d, rel, v, v_rel, norm, c, target) in zip(self.names, table)]

    def _save_point(self, row: dict | None = None) -> None:
        if self.tick == self.last_saved:
            return
        self.last_saved = self.tick
        row = row or (self.last_row if self.last_row.get("tick") == self.tick else None)
        meta = ModeMeta(model=self.meta.model, model_kwargs=self.meta.model_kwargs, dataset=self.meta.dataset,
                        seed=self.cfg.seed, train_config={}, format="point/1",
                        metrics={k: row[k] for k in ("train_loss", "train_acc", "test_loss", "test_acc")
                                 if row and row.get(k) is not None},
                        extra={"llpf.tick": self.tick, "llpf.run": self.writer.path.name})
        self.writer.save_point(self.tick, self.state, meta.to_metadata())

    # --- checkpoint and resume -------------------------------------------------------------------

    def _checkpoint(self) -> None:
        tensors = {f"state/{k}": v for k, v in self.state.items()}
        tensors.update({f"start_var/{n}": v.clone() for n, v in zip(self.names, self.start_var)})
        tensors.update({f"target_var/{n}": v.clone() for n, v in zip(self.names, self.target_var)})
        stream = self.stream.state_dict()
        tensors.update({"stream/perm": stream["perm"], "stream/rng": stream["rng"],
                        "torch_rng": torch.get_rng_state(), "c_len": self.c_len,
                        **({"cuda_rng": torch.cuda.get_rng_state(self.device)} if self.device.type == "cuda" else {}),
                        "layer_dist0": self.layer_dist0})
        info = {"tick": self.tick, "stage_index": self.stage_index, "stage_start": self.stage_start,
                "phase_index": self.phase_index, "stream_pos": stream["pos"], "dist0": self.dist0,
                "device_type": self.device.type,
                "wall_s": self.wall_offset + time.perf_counter() - self.t0,
                "rolling_window": []}  # each tick starts a fresh window, so it is empty between ticks
        self.writer.save_checkpoint(tensors, info)

    def _restore(self, tensors: dict[str, torch.Tensor], info: dict) -> None:
        self.tick, self.stage_index, self.stage_start = info["tick"], info["stage_index"], info["stage_start"]
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("state/")})
        self._begin_stage()
        self.stream.load_state_dict({"perm": tensors["stream/perm"], "pos": info["stream_pos"],
                                     "rng": tensors["stream/rng"]})
        self.start_var = torch.stack([tensors[f"start_var/{n}"] for n in self.names]).to(self.device)
        self.target_var = torch.stack([tensors[f"target_var/{n}"] for n in self.names]).to(self.device)
        self.conformal = None  # from the restored start variances, not those _begin_stage measured
        torch.set_rng_state(tensors["torch_rng"])
        if "cuda_rng" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["cuda_rng"], self.device)
        if info["phase_index"] >= 0:
            self._begin_phase(info["phase_index"], tensors["c_len"].to(self.device))
        self.dist0, self.layer_dist0 = info["dist0"], tensors["layer_dist0"].to(self.device)
        with torch.no_grad():
            self.dists = self._layer_distances()
        self.wall_offset = info["wall_s"]
        self.writer.truncate_after(self.tick)
        if (self.writer.path / "points" / f"{self.tick:06d}.safetensors").exists():
            self.last_saved = self.tick

    def _summarise(self) -> None:
        run = load_run(self.writer.path)
        llpf_path(self.writer, run.metrics, run.points())
        summary = run_summary(load_run(self.writer.path))
        self.writer.update(summary={k: v for k, v in summary.items() if k not in ("name", "status", "algorithm")})
