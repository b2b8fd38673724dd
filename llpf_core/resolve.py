"""The one config resolver: model, dataset, method, preset and overrides -> the run's ``SearchConfig``.

``connect``, ``sweep``, the Search page and the Methods page all call ``resolve_config``, so the same
inputs give the same config everywhere: the preset given, else the default preset of the method's
family for the model (and dataset), else the generic M2M for a model without presets (a plugin's);
then the method's name and its own settings' defaults, the explicit fields, and the ``--set`` overrides.
"""
from dataclasses import dataclass, replace

from .config import SearchConfig, apply_overrides, validate, with_method_settings
from .errors import UserError
from .methods.registry import get_method
from .presets import GENERIC_M2M, default_preset, generic_m2m, load_preset, preset_info


@dataclass(frozen=True)
class Resolved:
    config: SearchConfig
    preset: str  # the preset used, or GENERIC_M2M
    warning: str | None = None  # e.g. the preset was tuned for another dataset (the caller shows it)


def resolve_config(model: str, dataset: str, algorithm: str | None = None, *, preset: str | None = None,
                   overrides: list[str] | tuple[str, ...] = (), to_origin: bool = False,
                   **fields) -> Resolved:
    """The config of a new run of ``algorithm`` (default: m2m, or m2o ``to_origin``) between two modes of
    ``model`` trained on ``dataset``. ``fields`` (ticks, seed, device, ...) replace the preset's values
    when not None; ``overrides`` are ``--set KEY=VALUE`` strings, applied last. Bad input is a ``UserError``."""
    algorithm = algorithm or ("m2o" if to_origin else "m2m")
    info = get_method(algorithm)
    if to_origin and info.needs_end:
        raise UserError(f"algorithm {algorithm} needs an end mode, not 'origin'")
    name, warning = preset or default_preset(model, dataset, algorithm), None
    if name is None and info.needs_preset:
        raise UserError(f"no {algorithm} preset for model {model!r}; pass --preset NAME (see `presets`)")
    if name is None or name == GENERIC_M2M:  # a model without presets: the generic one-phase M2M
        cfg, name = generic_m2m(), GENERIC_M2M
    else:
        chosen = preset_info(name)
        if chosen.model != model:
            raise UserError(f"preset {name} is for model {chosen.model!r}, but the modes are {model!r}")
        if chosen.dataset != dataset:
            warning = f"preset {name} was tuned for {chosen.dataset}, the modes were trained on {dataset}"
        cfg = load_preset(name)
    cfg = with_method_settings(replace(cfg, algorithm=algorithm))
    given = {k: v for k, v in fields.items() if v is not None}
    cfg = apply_overrides(replace(cfg, **given), list(overrides))
    validate(cfg)
    return Resolved(cfg, name, warning)
