"""Device choice and optional bf16 autocast."""
import contextlib
import sys

import torch

from .errors import UserError


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA where there is none is a ``UserError``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but no CUDA GPU is available; use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None


def autocast(device: torch.device, dtype: str):
    """bf16 autocast when asked for, else a no-op context."""
    if dtype != "bfloat16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def out_of_memory(e: BaseException, hint: str) -> UserError | None:
    """A one-line ``UserError`` for an out-of-memory failure (CUDA or host), else None."""
    if isinstance(e, torch.OutOfMemoryError) or (isinstance(e, RuntimeError) and
                                                 "can't allocate memory" in str(e)):
        return UserError(f"out of memory: {hint}")
    return None
