"""A model named by a file, checked before it is built: kwargs, a parameter budget and the file's shapes.

A mode file's metadata names a model and its kwargs, and building that model allocates its parameters:
a 36 KB file could ask for gigabytes (``{"hidden": [20000, 20000]}``). So the kwargs are checked for type
and size first, the model is built on PyTorch's "meta" device (shapes, no storage), its size is held
against ``max_parameters()`` and its state-dict shapes against those the file's header declares. Only
then is it built for real, and then it is no larger than the file's own tensors.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from .errors import UserError
from .registry import build_model, model_builder

MAX_PARAMETERS = 100_000_000  # the default budget: 6x the zoo's largest model (dla, 16.3M), above ViT-B's 86M
BUDGET_ENV = "LLPF_MAX_PARAMETERS"  # an operator may set another budget
MAX_LIST = 1024  # items in one kwargs list (an MLP's hidden widths: 1024 layers)
MAX_INT = 2 ** 31
MAX_TEXT = 256  # characters of one string value


def max_parameters() -> int:
    """The parameter budget: ``LLPF_MAX_PARAMETERS`` if set, else ``MAX_PARAMETERS``."""
    raw = os.environ.get(BUDGET_ENV, "").strip()
    if not raw:
        return MAX_PARAMETERS
    if not raw.isdigit() or int(raw) < 1:
        raise UserError(f"{BUDGET_ENV}={raw[:40]!r} is not a positive whole number; set it to a parameter "
                        f"count such as {MAX_PARAMETERS} or unset it")
    return int(raw)


def check_kwargs(kwargs, what: str) -> dict:
    """``kwargs`` if it is an object of plain values (numbers, strings, booleans, null, short flat lists
    of those) within the size limits above; one ``UserError`` otherwise."""
    if not isinstance(kwargs, dict):
        raise UserError(f"{what}: the model kwargs must be a JSON object, got {type(kwargs).__name__}")

    def scalar(key: str, v) -> None:
        if isinstance(v, bool) or v is None:
            return
        if isinstance(v, int):
            if abs(v) >= MAX_INT:
                raise UserError(f"{what}: model kwarg {key!r} = {str(v)[:20]} is out of range (|value| < 2**31)")
        elif isinstance(v, float):
            if v != v or v in (float("inf"), float("-inf")):
                raise UserError(f"{what}: model kwarg {key!r} is {v}, not a finite number")
        elif isinstance(v, str):
            if len(v) > MAX_TEXT:
                raise UserError(f"{what}: model kwarg {key!r} is a string of {len(v)} characters (at most {MAX_TEXT})")
        else:
            raise UserError(f"{what}: model kwarg {key!r} is a {type(v).__name__}; kwargs hold numbers, strings, "
                            f"booleans or lists of them")

    for key, value in kwargs.items():
        key = key[:40]
        if isinstance(value, list):
            if len(value) > MAX_LIST:
                raise UserError(f"{what}: model kwarg {key!r} lists {len(value)} values (at most {MAX_LIST})")
            for i, v in enumerate(value):
                scalar(f"{key}[{i}]", v)
        else:
            scalar(key, value)
    return kwargs


def meta_model(name: str, kwargs: dict, what: str) -> nn.Module:
    """The model built on the meta device (no storage) after ``check_kwargs``, within the budget."""
    check_kwargs(kwargs, what)
    try:
        model_builder(name)  # imports the zoo family outside the meta device
        with torch.device("meta"):
            model = build_model(name, **kwargs)
    except UserError as e:
        raise UserError(f"{what}: {str(e).splitlines()[0]}") from None
    except Exception as e:  # noqa: BLE001  (the builder is code; any failure here means the kwargs don't fit)
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise UserError(f"{what}: model {name!r} cannot be built with kwargs {_short(kwargs)} "
                        f"({type(e).__name__}: {first})") from None
    count = sum(t.numel() for t in model.state_dict().values())
    budget = max_parameters()
    if count > budget:
        raise UserError(f"{what}: model {name!r} with kwargs {_short(kwargs)} has {count:,} parameters and buffers, "
                        f"more than the limit of {budget:,} ({BUDGET_ENV})")
    return model


def check_shapes(model: nn.Module, shapes: dict[str, tuple[int, ...]], what: str) -> None:
    """One ``UserError`` starting with ``what`` unless ``shapes`` has exactly the model's keys and shapes."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = [f"{k} {shapes[k]}, model expects {expected[k]}"
             for k in expected if k in shapes and shapes[k] != expected[k]]
    parts = [f"missing {_some(missing)}" if missing else "", f"unexpected {_some(unexpected)}" if unexpected else "",
             f"wrong shape {_some(wrong)}" if wrong else ""]
    if any(parts):
        raise UserError(f"{what} ({'; '.join(p for p in parts if p)})")


def checked_model(name: str, kwargs: dict, shapes: dict[str, tuple[int, ...]], what: str) -> nn.Module:
    """``build_model(name, **kwargs)``, built for real only once the meta-device model is within the budget
    and has exactly ``shapes`` (a file's tensors, from its header)."""
    check_shapes(meta_model(name, kwargs, what), shapes, f"{what}: tensors do not match model {name!r}")
    return build_model(name, **kwargs)


def _some(names: list[str]) -> str:
    return f"{', '.join(names[:3])}{f' and {len(names) - 3} more' if len(names) > 3 else ''}"


def _short(kwargs: dict) -> str:
    text = repr(kwargs)
    return text if len(text) <= 80 else text[:77] + "..."
