"""``SearchConfig``: every setting of a path search, and its ``--set key=value`` overrides.

The dataclasses serialise to the ``config`` object of run.json. A plugin method's own settings (its
registered dataclass) are stored there under the method's prefix too, beside the built-in ones.
"""
import dataclasses
import json
import typing
from dataclasses import dataclass, field

from .errors import UserError


@dataclass
class TrainSpec:
    """The brief training inside each tick (docs/algorithm.md, M2M, step 4)."""
    lr: float = 1e-3
    batch_size: int = 64
    loss_threshold: float = 0.1  # stop once the rolling loss is at or below this ...
    min_iters: int = 5  # ... and at least this many iterations ran; also the rolling-window size
    max_iters: int = 5  # hard cap per tick
    # The threshold used is at least this times the larger of the endpoints' own train losses, so
    # training does not chase losses the end mode itself does not reach; 0 = loss_threshold as given.
    loss_floor_factor: float = 1.1


@dataclass
class Phase:
    """From ``start_tick`` on, move the layers matching ``layers`` with these step sizes."""
    start_tick: int = 0
    layers: list[str] = field(default_factory=lambda: ["*"])  # state-dict names, globs or prefixes
    step_a: float = 0.0  # fraction of the remaining distance per tick
    step_f: float = 0.0  # fixed step length (L2 units) per tick
    step_c: float = 0.0  # fraction of the phase-start geodesic distance per tick


@dataclass
class ContinuitySpec:
    """The interpolation check between consecutive path points (product decision 5)."""
    points: int = 10  # P: evaluates alpha = 1/P ... (P-1)/P; 0 turns the check off
    samples: int = 1000  # fixed training samples
    every: int = 1  # check every k-th tick


@dataclass
class BridgeSpec:
    """Stage 1 of ``cross_sphere``: M2O or to_vs from the start mode onto the end mode's sphere."""
    algorithm: str = "to_vs"  # to_vs | m2o
    ticks: int = 1000  # at most; the stage ends as soon as every moved layer is on the sphere
    step_a: float = 1e-3
    step_f: float = 0.0
    tolerance: float = 0.02  # to_vs: on the sphere once every layer's norm is within 2% of the end's
    train: TrainSpec = field(default_factory=lambda: TrainSpec(loss_threshold=0.02, min_iters=5,
                                                               max_iters=100))


@dataclass
class CurveSpec:
    """linear, bezier and rebasin (``curve.*``): points evaluated along the path, bezier's training, and
    REPAIR of the straight lines' points (methods/straight.py)."""
    points: int = 21  # evaluated and saved points along the path, both ends included
    steps: int = 3000  # bezier: SGD steps on the bend, t ~ U(0, 1) per batch
    lr: float = 0.05
    momentum: float = 0.9
    batch_size: int = 64
    repair: bool = False  # linear, rebasin: REPAIR every point (Jordan et al. 2023; docs/autoneb-repair.md)
    repair_samples: int = 2000  # fixed training samples REPAIR measures the statistics on

    def __post_init__(self):
        if self.repair_samples <= 0:
            raise UserError(f"curve.repair_samples must be positive, got {self.repair_samples}")


@dataclass
class SearchConfig:
    algorithm: str = "m2m"  # a registered path method (methods.registry.list_methods())
    ticks: int = 1000  # outer iterations (for cross_sphere: of the M2M stage)
    seed: int = 0  # data order, augmentation, evaluation subsets (decision 7)
    device: str = "auto"  # cpu | cuda | cuda:N | auto
    dtype: str = "float32"  # float32 | bfloat16 (autocast)
    channels_last: bool = False  # NHWC memory format for convolutional models (faster on GPUs; LeNet-5 on CPUs)
    # Opt-in CUDA speed settings (they change the numerics; ignored on the CPU):
    tf32: bool = False  # float32 matmuls in TF32 (torch.set_float32_matmul_precision("high"))
    cudnn_benchmark: bool = False  # cuDNN autotuning (torch.backends.cudnn.benchmark)
    phases: list[Phase] = field(default_factory=lambda: [Phase(step_a=1e-3)])
    merge_bias: bool = False  # move X.weight and X.bias as one vector
    clamp_step: bool = True  # decision 1: never step past the destination
    variance_scope: str = "all"  # decision 2: all (reference) | moved (this phase's layers only)
    variance_target: str = "start"  # A2: start (reference) | blend (decision 8: start's -> end's)
    variance_eps: float = 1e-4
    lr_policy: str = "var"  # M2O angle-conformal learning rate: var | std
    train: TrainSpec = field(default_factory=TrainSpec)
    eval_every: int = 1  # eval-mode train/test metrics and layers.csv every k ticks
    eval_samples: int = 0  # samples per evaluation split; 0 = the whole split
    bn_recal_batches: int = 10  # decision 4: BatchNorm statistics recomputed before evaluation
    save_every: int = 100  # path points, besides first, last and phase boundaries
    checkpoint_every: int = 100
    continuity: ContinuitySpec = field(default_factory=ContinuitySpec)
    baseline_points: int = 11  # straight-line baseline between the endpoints; 0 = off
    stop_when_loss_exceeds: float | None = None  # stop early if the rolling train loss exceeds it
    bridge: BridgeSpec = field(default_factory=BridgeSpec)
    curve: CurveSpec = field(default_factory=CurveSpec)
    # Plugin methods' settings by prefix (as plain dicts); to_dict writes them at the top level.
    plugin_settings: dict[str, dict] = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        plugin_settings = data.pop("plugin_settings")
        return {**data, **plugin_settings}

    @classmethod
    def from_dict(cls, data: dict, plugins_loaded: bool = True) -> "SearchConfig":
        """``plugins_loaded=False`` (reading a finished run): a plugin method's settings whose plugin is not
        loaded are kept as they are, unchecked."""
        if not isinstance(data, dict):
            raise UserError(f"config must be an object, got {data!r}")
        names = {f.name for f in dataclasses.fields(cls)} - {"plugin_settings"}
        extra = {k: v for k, v in data.items() if k not in names}
        cfg = _from_dict(cls, {k: v for k, v in data.items() if k in names}, "")
        if extra:
            from .methods.registry import settings_prefixes
            known = settings_prefixes()
            cfg.plugin_settings = {k: v if not plugins_loaded and k not in known and isinstance(v, dict)
                                   else dataclasses.asdict(_plugin_settings(k, v)) for k, v in extra.items()}
        return cfg


def _plugin_settings(prefix: str, value):
    """A plugin method's settings dataclass from the config's ``prefix`` object (type-checked)."""
    from .methods.registry import settings_prefixes
    info = settings_prefixes().get(prefix)
    if info is None:
        known = sorted({f.name for f in dataclasses.fields(SearchConfig)} - {"plugin_settings"})
        raise UserError(f"unknown config key {prefix}; known keys: {', '.join(known)} (a plugin method's "
                        f"settings need its --plugin FILE.py or LLPF_PLUGINS)")
    return _from_dict(info.settings, value, prefix + ".")


def method_settings(cfg: SearchConfig):
    """The settings dataclass of ``cfg.algorithm`` (None for LLPF: its settings are SearchConfig's own)."""
    from .methods.registry import get_method
    info = get_method(cfg.algorithm)
    if info.prefix is None:
        return None
    if info.prefix in cfg.plugin_settings:
        return _plugin_settings(info.prefix, cfg.plugin_settings[info.prefix])
    return getattr(cfg, info.prefix, None) or info.settings()


def with_method_settings(cfg: SearchConfig) -> SearchConfig:
    """``cfg`` holding its method's settings (their defaults if absent), so ``--set PREFIX.key`` finds them."""
    from .methods.registry import get_method
    info = get_method(cfg.algorithm)
    if info.prefix is None or hasattr(cfg, info.prefix) or info.prefix in cfg.plugin_settings:
        return cfg
    return dataclasses.replace(cfg, plugin_settings={**cfg.plugin_settings,
                                                     info.prefix: dataclasses.asdict(info.settings())})


def _from_dict(cls, data, prefix: str):
    if not isinstance(data, dict):
        raise UserError(f"config {prefix.rstrip('.') or 'value'} must be an object, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(f"unknown config key {prefix}{unknown[0]}; known keys: "
                        f"{', '.join(prefix + n for n in sorted(names))}")
    return cls(**{k: _coerce(hints[k], v, prefix + k) for k, v in data.items()})


def _coerce(tp, value, key: str):
    """Check ``value`` against the annotation ``tp`` and convert where it is lossless."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, value, key + ".")
    if origin is typing.Union or origin is getattr(__import__("types"), "UnionType", None):
        if value is None and type(None) in args:
            return None
        return _coerce(next(a for a in args if a is not type(None)), value, key)
    if origin is list:
        if isinstance(value, str) and args[0] is str:  # "a,b" shorthand for ["a", "b"]
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise UserError(f"{key} must be a list, got {value!r}")
        return [_coerce(args[0], v, f"{key}.{i}") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise UserError(f"{key} must be of type {getattr(tp, '__name__', tp)}, got {value!r}")


def apply_overrides(cfg: SearchConfig, overrides: list[str]) -> SearchConfig:
    """Apply ``key=value`` strings (dotted keys, list indices as numbers: ``phases.0.step_a=1e-3``).

    A ``train.loss_threshold`` or ``bridge.train.loss_threshold`` given here is used exactly as
    given: its ``loss_floor_factor`` becomes 0 unless that is given too.
    """
    data = cfg.to_dict()
    keys = [item.partition("=")[0].strip() for item in overrides]
    for spec in ("train", "bridge.train"):
        if f"{spec}.loss_threshold" in keys and f"{spec}.loss_floor_factor" not in keys:
            overrides = [*overrides, f"{spec}.loss_floor_factor=0"]
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set expects key=value, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw  # a bare word is a string: --set device=cpu
        if raw.lower() in ("none", "null"):
            value = None
        parts = key.strip().split(".")
        node = data
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise UserError(f"--set {key}: no item {part!r} in a list of {len(node)}")
                part = int(part)
            elif not isinstance(node, dict) or part not in node:
                raise UserError(f"unknown config key {'.'.join(parts[:depth + 1])!r} in --set {item}; "
                                f"see the config of any run.json for the keys")
            if last:
                node[part] = value
            else:
                node = node[part]
    return SearchConfig.from_dict(data)


def validate(cfg: SearchConfig) -> None:
    """Check ranges and choices; layer patterns are checked against the model in ``flow``."""
    def need(ok: bool, msg: str):
        if not ok:
            raise UserError(msg)

    from .methods.registry import get_method
    get_method(cfg.algorithm)  # an unknown name lists the registered ones
    need(cfg.ticks > 0, f"ticks must be positive, got {cfg.ticks}")
    need(cfg.device == "auto" or cfg.device == "cpu" or cfg.device.startswith("cuda"),
         f"device must be cpu, cuda, cuda:N or auto, got {cfg.device!r}")
    need(cfg.dtype in ("float32", "bfloat16"), f"dtype must be float32 or bfloat16, got {cfg.dtype!r}")
    need(cfg.variance_scope in ("all", "moved"), f"variance_scope must be all or moved, got {cfg.variance_scope!r}")
    need(cfg.variance_target in ("start", "blend"),
         f"variance_target must be start or blend, got {cfg.variance_target!r}")
    need(cfg.lr_policy in ("var", "std"), f"lr_policy must be var or std, got {cfg.lr_policy!r}")
    need(cfg.variance_eps >= 0, f"variance_eps must be >= 0, got {cfg.variance_eps}")
    need(len(cfg.phases) > 0, "phases must list at least one phase")
    need(cfg.phases[0].start_tick == 0, f"the first phase must start at tick 0, not {cfg.phases[0].start_tick}")
    for i, p in enumerate(cfg.phases):
        need(min(p.step_a, p.step_f, p.step_c) >= 0, f"phases.{i}: step sizes must be >= 0")
        need(p.step_a + p.step_f + p.step_c > 0, f"phases.{i}: step_a, step_f and step_c are all zero, so "
             f"nothing would move; set one of them above zero")
        need(len(p.layers) > 0, f"phases.{i}.layers is empty")
        need(p.step_c == 0 or cfg.algorithm in ("m2m", "cross_sphere") or not get_method(cfg.algorithm).walks,
             f"phases.{i}.step_c is only used by m2m (a fraction of the geodesic distance to the end mode)")
        if i:
            need(p.start_tick > cfg.phases[i - 1].start_tick,
                 f"phases.{i}.start_tick must be after phase {i - 1}'s ({cfg.phases[i - 1].start_tick})")
        need(p.start_tick < cfg.ticks, f"phases.{i} starts at tick {p.start_tick}, at or after ticks={cfg.ticks}")
    for name, spec in (("train", cfg.train), ("bridge.train", cfg.bridge.train)):
        need(spec.lr > 0, f"{name}.lr must be positive, got {spec.lr}")
        need(spec.batch_size > 0, f"{name}.batch_size must be positive, got {spec.batch_size}")
        need(spec.min_iters > 0, f"{name}.min_iters must be positive, got {spec.min_iters}")
        need(spec.max_iters >= spec.min_iters,
             f"{name}.max_iters ({spec.max_iters}) must be >= min_iters ({spec.min_iters})")
        need(spec.loss_floor_factor >= 0,
             f"{name}.loss_floor_factor must be >= 0 (0 = loss_threshold as given), got {spec.loss_floor_factor}")
    for name in ("eval_every", "save_every", "checkpoint_every", "bn_recal_batches"):
        need(getattr(cfg, name) > 0, f"{name} must be positive, got {getattr(cfg, name)}")
    need(cfg.eval_samples >= 0, f"eval_samples must be >= 0 (0 = whole split), got {cfg.eval_samples}")
    need(cfg.continuity.points >= 0 and cfg.continuity.points != 1,
         f"continuity.points must be 0 (off) or at least 2, got {cfg.continuity.points}")
    need(cfg.continuity.samples > 0, f"continuity.samples must be positive, got {cfg.continuity.samples}")
    need(cfg.continuity.every > 0, f"continuity.every must be positive, got {cfg.continuity.every}")
    need(cfg.baseline_points >= 0 and cfg.baseline_points != 1,
         f"baseline_points must be 0 (off) or at least 2, got {cfg.baseline_points}")
    need(cfg.bridge.algorithm in ("to_vs", "m2o"),
         f"bridge.algorithm must be to_vs or m2o, got {cfg.bridge.algorithm!r}")
    need(cfg.bridge.ticks > 0, f"bridge.ticks must be positive, got {cfg.bridge.ticks}")
    need(cfg.bridge.tolerance > 0, f"bridge.tolerance must be positive, got {cfg.bridge.tolerance}")
    need(cfg.bridge.step_a >= 0 and cfg.bridge.step_f >= 0 and cfg.bridge.step_a + cfg.bridge.step_f > 0,
         "bridge.step_a and bridge.step_f must be >= 0 and not both zero")
    need(cfg.curve.points >= 2, f"curve.points must be at least 2 (both ends), got {cfg.curve.points}")
    need(cfg.curve.steps >= 0, f"curve.steps must be >= 0, got {cfg.curve.steps}")
    need(cfg.curve.lr > 0, f"curve.lr must be positive, got {cfg.curve.lr}")
    need(0 <= cfg.curve.momentum < 1, f"curve.momentum must be in [0, 1), got {cfg.curve.momentum}")
    need(cfg.curve.batch_size > 0, f"curve.batch_size must be positive, got {cfg.curve.batch_size}")
