"""Atomic file writes and safe safetensors reads, shared by mode files, points and checkpoints."""
import errno
import hashlib
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


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks (mode files can be hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


DIGEST_KEY = "llpf.sha256"


def tensor_digest(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """sha256 over the metadata (but ``DIGEST_KEY``) and every tensor's name, dtype, shape and bytes."""
    h = hashlib.sha256(json.dumps({k: v for k, v in sorted(metadata.items()) if k != DIGEST_KEY}).encode())
    for key in sorted(tensors):
        t = tensors[key].detach().to("cpu").contiguous()
        h.update(f"\0{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                 metadata: dict[str, str], digest: bool = False) -> None:
    """Save tensors (copied to the CPU) and string metadata as one safetensors file, atomically.
    With ``digest``, the metadata also holds ``DIGEST_KEY``, which ``read_tensors`` then verifies: damage
    anywhere in the file is found, not only in its header."""
    cpu = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    if digest:
        metadata = {**metadata, DIGEST_KEY: tensor_digest(cpu, metadata)}
    write_atomic(path, safetensors_bytes(cpu, metadata=metadata))


def read_header(path: str | os.PathLike, what: str = "file",
                fix: str | None = None) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """A safetensors file's metadata and its tensors' shapes, from the header alone (no tensor is loaded)."""
    path = _readable(path, what)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for bad files
        raise _invalid(path, what, e, fix or PICKLE_HINT) from None
    return metadata, shapes


def _readable(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} {'is not a regular file' if path.exists() else 'does not exist'}")
    try:
        open(path, "rb").close()  # an unreadable file is not a corrupt one
    except OSError as e:
        raise os_error(e, f"read {what}", path) from None
    return path


def _invalid(path: Path, what: str, e: Exception, fix: str) -> UserError:
    return UserError(f"{path} is not a valid safetensors {what} ({type(e).__name__}: "
                     f"{str(e).splitlines()[0] if str(e) else 'unreadable'}); {fix}")


PICKLE_HINT = "it may be truncated, corrupt or a pickle (.pt), which LLPF never loads"


def read_tensors(path: str | os.PathLike, what: str = "file",
                 fix: str = PICKLE_HINT) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file. Anything else (a pickle, a truncated file) is a ``UserError``.

    safetensors parses a JSON header and raw buffers only, so no code in the file can run.
    """
    path = _readable(path, what)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for bad files
        raise _invalid(path, what, e, fix) from None
    if DIGEST_KEY in metadata and tensor_digest(tensors, metadata) != metadata[DIGEST_KEY]:
        raise UserError(f"{path} is damaged (its content does not match the checksum it was written with); "
                        f"it cannot be used: start a new run (or restore the file from a backup)")
    return tensors, metadata
