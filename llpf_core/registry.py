"""Model registry: ``@register_model`` entry points, ``build_model`` and ``list_models``.

Every builder takes keyword-only arguments. A mode file stores the registry name and the kwargs,
so ``build_model(name, **kwargs)`` rebuilds the exact architecture. The zoo's families register
themselves when first needed (``models.ZOO``); other code registers with the decorator.
"""
from __future__ import annotations

import inspect
from fnmatch import fnmatch
from importlib import import_module
from typing import TYPE_CHECKING, Callable

from . import plugins
from .errors import UserError
from .models import ZOO

if TYPE_CHECKING:
    from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_PLUGIN_OF: dict[str, dict] = {}  # model name -> the plugin that registered it ({"path", "sha256"})


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn`` under its own name. A duplicate name is a programming error; in a plugin, a
    name the zoo has is the user's to fix."""
    name = fn.__name__
    plugin = plugins.current()
    if plugin and (name in ZOO or name in _MODELS):
        raise UserError(f"plugin {plugin['path']} registers model {name!r}, which "
                        f"{'the zoo' if name in ZOO else _PLUGIN_OF.get(name, {}).get('path', 'another')} "
                        f"already has; rename the builder")
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = fn
    if plugin:
        _PLUGIN_OF[name] = plugin
    return fn


def plugin_of(name: str) -> dict | None:
    """The plugin (path, sha256) that registered model ``name``; None for the zoo's."""
    return _PLUGIN_OF.get(name)


def list_models(pattern: str = "") -> list[str]:
    """Registered model names (the zoo's and the plugins'), sorted, optionally filtered by an fnmatch pattern."""
    plugins.load_plugins()
    return sorted(n for n in set(_MODELS) | set(ZOO) if not pattern or fnmatch(n, pattern))


def _accepted(fn: Callable, kwargs: dict) -> dict:
    """The kwargs ``fn`` takes: the data's offers (num_classes, in_channels, image_size) reach a
    builder only if its signature names them (or has ``**kwargs``)."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs
    offered = {"num_classes", "in_channels", "image_size"}
    return {k: v for k, v in kwargs.items() if k in params or k not in offered}


def require_model(name: str) -> None:
    """UserError naming the known models unless ``name`` is one (the zoo's or a plugin's)."""
    model_builder(name)


def model_builder(name: str) -> Callable[..., nn.Module]:
    """The registered builder of ``name`` (importing its zoo family first); an unknown name is a ``UserError``."""
    plugins.load_plugins()
    if name not in _MODELS and name in ZOO:
        import_module(f"{__package__}.models.{ZOO[name]}")
    if name not in _MODELS:
        raise UserError(f"unknown model {name[:60]!r}; choose one of: {', '.join(list_models())}")
    return _MODELS[name]


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a freshly initialised model. ``kwargs`` go to the builder (num_classes, in_channels, ...).

    A model without ``input_shape`` (a plugin's) gets one from ``in_channels`` and ``image_size``,
    for ``follow_data_flow``."""
    builder = model_builder(name)
    try:
        model = builder(**_accepted(builder, kwargs))
    except TypeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"bad arguments for model {name!r}: {first}") from None
    if not hasattr(model, "input_shape") and "in_channels" in kwargs and "image_size" in kwargs:
        model.input_shape = (kwargs["in_channels"], kwargs["image_size"], kwargs["image_size"])
    return model
