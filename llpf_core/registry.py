"""Model registry: ``@register_model`` entry points, ``build_model`` and ``list_models``.

Every builder takes keyword-only arguments. A mode file stores the registry name and the kwargs,
so ``build_model(name, **kwargs)`` rebuilds the exact architecture. The zoo's families register
themselves when first needed (``models.ZOO``); other code registers with the decorator.
"""
from __future__ import annotations

from fnmatch import fnmatch
from importlib import import_module
from typing import TYPE_CHECKING, Callable

from .errors import UserError
from .models import ZOO

if TYPE_CHECKING:
    from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn`` under its own name. A duplicate name is a programming error."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = fn
    return fn


def list_models(pattern: str = "") -> list[str]:
    """Registered model names (the zoo's included), sorted, optionally filtered by an fnmatch pattern."""
    return sorted(n for n in set(_MODELS) | set(ZOO) if not pattern or fnmatch(n, pattern))


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a freshly initialised model. ``kwargs`` go to the builder (num_classes, in_channels, ...)."""
    if name not in _MODELS and name in ZOO:
        import_module(f"{__package__}.models.{ZOO[name]}")
    if name not in _MODELS:
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    try:
        model = _MODELS[name](**kwargs)
    except TypeError as e:
        raise UserError(f"bad arguments for model {name!r}: {e}") from None
    return model
