"""Atomic file writes and safe safetensors reads, shared by mode files, points and checkpoints."""
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from .errors import UserError


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}; free some disk space or choose a "
                        f"writable folder") from None


def write_json(path: str | os.PathLike, obj) -> None:
    write_atomic(path, (json.dumps(obj, indent=2) + "\n").encode())


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                 metadata: dict[str, str]) -> None:
    """Save tensors (copied to the CPU) and string metadata as one safetensors file, atomically."""
    cpu = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    write_atomic(path, safetensors_bytes(cpu, metadata=metadata))


def read_tensors(path: str | os.PathLike, what: str = "file") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file. Anything else (a pickle, a truncated file) is a ``UserError``.

    safetensors parses a JSON header and raw buffers only, so no code in the file can run.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} {'is not a regular file' if path.exists() else 'does not exist'}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for bad files
        raise UserError(f"{path} is not a valid safetensors {what} ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else 'unreadable'}); it may be truncated, "
                        f"corrupt or a pickle (.pt), which LLPF never loads") from None
    return tensors, metadata
