"""Checked readers for the files LLPF writes (run folders, checkpoints, sweep folders, landscapes).

A file that is truncated, has flipped bits, holds values of the wrong type or lacks a key is damaged:
every reader here turns that into one ``UserError`` naming the file, what is wrong and what to do, and
none of them writes anything. A schema is a dict of key -> expected value, where a value is a type, a
tuple of alternatives (types, ``None`` or schemas), a nested dict schema, or a one-item list ``[schema]``
for a list of such items. A key ending in ``?`` is optional. ``int`` never accepts a bool; ``float``
accepts an int.
"""
from __future__ import annotations

import io
import json
import os
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import torch

from .errors import UserError
from .safefile import os_error

RESTART = "start a new run (or restore the folder from a backup)"


def damaged(path: str | os.PathLike, problem: str, fix: str) -> UserError:
    """The one-line error for a damaged file."""
    return UserError(f"{path} is damaged ({problem}); {fix}")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def read_json(path: str | os.PathLike, schema: dict | None = None, *, fix: str = RESTART) -> dict:
    """A JSON object from ``path``, checked against ``schema``."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path} does not exist; {fix}") from None
    except OSError as e:
        raise os_error(e, "read", path) from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise damaged(path, f"not valid JSON: {_first_line(e)}", fix) from None
    check_schema(data, schema or {}, path, fix)
    return data


def parse_json(text: str, path: str | os.PathLike, what: str, fix: str = RESTART):
    """A JSON value embedded in a file (e.g. safetensors metadata), damaged if it does not parse."""
    try:
        return json.loads(text)
    except (ValueError, TypeError, RecursionError) as e:
        raise damaged(path, f"{what} is not valid JSON: {_first_line(e)}", fix) from None


def _kind(value) -> str:
    return "null" if value is None else type(value).__name__


def _matches(value, expected) -> bool:
    if expected is None:
        return value is None
    if isinstance(expected, (dict, list)):
        return isinstance(value, type(expected))
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, expected)


def _name(expected) -> str:
    if expected is None:
        return "null"
    if isinstance(expected, dict):
        return "object"
    if isinstance(expected, list):
        return "list"
    return "number" if expected is float else expected.__name__


def check_schema(data, schema, path: str | os.PathLike, fix: str = RESTART, where: str = "") -> None:
    """Raise the damaged-file error unless ``data`` matches ``schema`` (see the module docstring)."""
    options = schema if isinstance(schema, tuple) else (schema,)
    chosen = next((o for o in options if _matches(data, o)), ...)
    if chosen is ...:
        raise damaged(path, f"{where or 'its content'} is {_kind(data)}, expected "
                            f"{' or '.join(_name(o) for o in options)}", fix)
    if isinstance(chosen, dict):
        for key, expected in chosen.items():
            optional = key.endswith("?")
            key = key.rstrip("?")
            if key not in data:
                if optional:
                    continue
                raise damaged(path, f"{where + '.' if where else ''}{key} is missing", fix)
            check_schema(data[key], expected, path, fix, f"{where + '.' if where else ''}{key}")
    elif isinstance(chosen, list) and chosen:
        for i, item in enumerate(data):
            check_schema(item, chosen[0], path, fix, f"{where}[{i}]")


def read_csv(path: str | os.PathLike, columns: list[str], *, text: tuple[str, ...] = (),
             required: tuple[str, ...] = (), fix: str = RESTART) -> pd.DataFrame:
    """A CSV table with at least ``columns``: numeric except ``text``, no empty cell in ``required``.

    A missing file is an empty table; a last line without its newline (being written right now) is not
    a row yet.
    """
    path = Path(path)
    try:
        raw = path.read_bytes() if path.exists() else b""
    except OSError as e:
        raise os_error(e, "read", path) from None
    try:
        content = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise damaged(path, f"not UTF-8 text: {_first_line(e)}", fix) from None
    return parse_csv(content[:content.rfind("\n") + 1], path, columns, text=text, required=required, fix=fix)


def parse_csv(content: str, path: str | os.PathLike, columns: list[str], *, text: tuple[str, ...] = (),
              required: tuple[str, ...] = (), fix: str = RESTART) -> pd.DataFrame:
    """``read_csv`` for the text of ``path`` already read (whole lines)."""
    if not content:
        return pd.DataFrame(columns=columns)
    if "\0" in content:
        raise damaged(path, "it holds NUL bytes", fix)
    try:
        frame = pd.read_csv(io.StringIO(content))
    except (ValueError, pd.errors.ParserError) as e:  # EmptyDataError and ParserError are ValueErrors
        raise damaged(path, f"not a valid CSV table: {_first_line(e)}", fix) from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise damaged(path, f"its header lacks the column(s) {', '.join(missing)}", fix)
    for column in columns:
        if column in text:
            continue
        values = frame[column]
        if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            numeric = pd.to_numeric(values, errors="coerce")
            bad = values[numeric.isna() & values.notna()]
            if len(bad):
                raise damaged(path, f"column {column} holds {str(bad.iloc[0])[:40]!r} in row {bad.index[0] + 1}, "
                                    f"not a number", fix)
            frame[column] = numeric
    for column in required:
        if frame[column].isna().any():
            raise damaged(path, f"column {column} is empty in row {int(frame[column].isna().idxmax()) + 1}", fix)
    return frame


# --- checkpoints ------------------------------------------------------------------------------------

def generator_state(state, device_type: str, path: str | os.PathLike, key: str) -> torch.Tensor:
    """``state`` if it is a valid random-generator state for ``device_type`` (checked on a fresh
    generator, so nothing is changed); the damaged-file error otherwise."""
    if not isinstance(state, torch.Tensor) or state.dtype != torch.uint8 or state.dim() != 1:
        raise damaged(path, f"{key} is not a random-generator state", RESTART)
    if device_type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{path}: {key} is a CUDA random state and this machine has no CUDA GPU; resume on the "
                        f"machine type that wrote the run, or start a new run")
    try:
        torch.Generator(device_type).set_state(state)
    except (RuntimeError, ValueError, TypeError) as e:
        raise damaged(path, f"{key} is not a {device_type} random-generator state: {_first_line(e)}; it may come "
                            f"from the other device type", RESTART) from None
    return state


def set_torch_rng(state, path: str | os.PathLike, key: str) -> None:
    """``torch.set_rng_state`` (the CPU's global generator) for a checkpoint's tensor, checked first."""
    torch.set_rng_state(generator_state(state, "cpu", path, key))


def set_cuda_rng(state, device: torch.device, path: str | os.PathLike, key: str) -> None:
    """``torch.cuda.set_rng_state`` for a checkpoint's tensor, checked first."""
    torch.cuda.set_rng_state(generator_state(state, "cuda", path, key), device)


@contextmanager
def checkpoint_errors(path: str | os.PathLike):
    """Within this block, a checkpoint whose content does not fit (a missing key, a tensor of the wrong
    shape or type, an out-of-range value) is the damaged-file error for ``path``."""
    try:
        yield
    except UserError:
        raise
    except (KeyError, IndexError, ValueError, TypeError, RuntimeError, AttributeError) as e:
        problem = f"missing entry {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {_first_line(e)}"
        raise damaged(path, problem, RESTART) from None
