"""Method registry: ``@register_method`` entry points, ``list_methods`` and ``get_method``.

Like the model registry (timm's ``register_model``): each path method is one module that registers its
name, a one-line description, its settings (a dataclass stored in the run's config under its own
prefix, so ``--set PREFIX.key=value`` reaches it) and the class that runs it (``methods.base.Method``).
The built-in methods register themselves when first needed (``BUILTIN``); a plugin file
(``--plugin`` / ``LLPF_PLUGINS``) registers its own the same way. Listing the built-in names imports
nothing: the CLI's ``--help`` needs no torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Callable

from .. import plugins
from ..errors import UserError

# Built-in method -> its module in llpf_core/methods/, in the order the CLI and the pages list them.
BUILTIN = {"m2m": "llpf", "m2o": "llpf", "to_vs": "llpf", "cross_sphere": "llpf",
           "linear": "linear", "bezier": "bezier", "rebasin": "rebasin", "autoneb": "autoneb"}


@dataclass(frozen=True)
class MethodInfo:
    """A registered path method."""
    name: str
    description: str  # one line, for the CLI's help and the pages
    build: Callable  # build(ctx: MethodContext) -> Method
    settings: type | None = None  # its own settings dataclass (None: the LLPF fields of SearchConfig)
    prefix: str | None = None  # the config key holding them: --set PREFIX.key=value
    needs_end: bool = True  # False: may run to the origin (m2o)
    preset_family: str | None = None  # "m2m" or "m2o": the presets it takes its defaults from
    needs_preset: bool = False  # no generic fallback: a model without a preset is refused
    plugin: dict | None = None  # the plugin file that registered it ({"path", "sha256"})
    reads: tuple[str, ...] | None = None  # the settings it reads, where it shares its settings (None: all)

    @property
    def walks(self) -> bool:
        """An LLPF-like method: a path point after every unit of work, configured by phases (a layer order)."""
        return bool(getattr(self.build, "walks", False))


_METHODS: dict[str, MethodInfo] = {}


def register_method(name: str, *, description: str, settings: type | None = None, prefix: str | None = None,
                    needs_end: bool = True, preset_family: str | None = None, needs_preset: bool = False,
                    reads: tuple[str, ...] | None = None) -> Callable:
    """Decorator: register a ``Method`` class (or any ``build(ctx)`` callable) as path method ``name``.

    ``settings`` is a dataclass of the method's own settings; they live in the run's config under
    ``prefix`` (default: the method's name). A plugin may not reuse a registered name."""
    def decorator(build: Callable) -> Callable:
        plugin = plugins.current()
        if name in _METHODS or (plugin and name in BUILTIN):
            owner = "LLPF Explorer" if name in BUILTIN else (_METHODS[name].plugin or {}).get("path", "another module")
            if plugin:
                raise UserError(f"plugin {plugin['path']} registers method {name!r}, which {owner} already "
                                f"has; rename it")
            raise ValueError(f"method {name!r} is already registered")
        chosen_prefix = prefix or (name if settings is not None else None)
        _METHODS[name] = MethodInfo(name, description, build, settings, chosen_prefix, needs_end, preset_family,
                                    needs_preset, plugin, reads)
        return build
    return decorator


def list_methods() -> list[str]:
    """Every registered method's name: the built-in ones in their order, then the plugins' (sorted)."""
    plugins.load_plugins()
    return [*BUILTIN, *sorted(n for n in _METHODS if n not in BUILTIN)]


def get_method(name: str) -> MethodInfo:
    """The registered method ``name``; an unknown name is a ``UserError`` listing the known ones."""
    plugins.load_plugins()
    if name not in _METHODS and name in BUILTIN:
        import_module(f"{__package__}.{BUILTIN[name]}")
    if name not in _METHODS:
        raise UserError(f"unknown algorithm {name!r}; choose one of: {', '.join(list_methods())} "
                        f"(a plugin method needs its --plugin FILE.py or LLPF_PLUGINS)")
    return _METHODS[name]


def settings_prefixes() -> dict[str, MethodInfo]:
    """The config prefix of each registered method with its own settings (several may share one)."""
    plugins.load_plugins()
    for module in set(BUILTIN.values()):  # a built-in method's settings outside SearchConfig (autoneb.*)
        import_module(f"{__package__}.{module}")
    return {m.prefix: m for m in _METHODS.values() if m.prefix}
