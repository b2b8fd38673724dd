"""Atomic file writes and safe safetensors reads, shared by mode files, points and checkpoints."""
import errno
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from .errors import UserError

# The process's umask, read once at import (os.umask can only be read by setting it, which is not
# thread-safe later): files written atomically get the same permissions as open() would give them.
_UMASK = os.umask(0o022)
os.umask(_UMASK)

_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)


def os_error(e: OSError, action: str, path: str | os.PathLike) -> UserError:
    """A one-line ``UserError`` for a failed read or write: what failed, on which path, and the fix."""
    if e.errno in _FULL:
        fix = "the disk is full or a file-size limit was reached; free some space and try again"
    elif e.errno in _DENIED:
        fix = "permission denied; choose a folder you can write to (or fix its permissions)"
    elif e.errno == errno.ENOTDIR:
        fix = "a part of the path is a file, not a folder; choose another path"
    else:
        fix = e.strerror or str(e)
    return UserError(f"cannot {action} {path}: {fix} ([Errno {e.errno}] {e.strerror})")


TMP_SUFFIX = ".tmp"


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o666 & ~_UMASK)  # mkstemp's files are 0600; follow the umask instead
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as e:
        raise os_error(e, "write", path) from None


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
        open(path, "rb").close()  # an unreadable file is not a corrupt one
    except OSError as e:
        raise os_error(e, f"read {what}", path) from None
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for bad files
        raise UserError(f"{path} is not a valid safetensors {what} ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else 'unreadable'}); it may be truncated, "
                        f"corrupt or a pickle (.pt), which LLPF never loads") from None
    return tensors, metadata
