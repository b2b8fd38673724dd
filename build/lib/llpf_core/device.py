"""Device choice, optional bf16 autocast, the CUDA speed settings, and out-of-memory recognition."""
import contextlib
import sys
from collections.abc import Iterator

import torch

from .errors import UserError

# Out-of-memory failures outside the caching allocator come as a plain RuntimeError: context
# creation, cuBLAS handles and workspaces, cuDNN workspaces.
_OOM_MESSAGES = ("can't allocate memory", "CUDA error: out of memory", "CUBLAS_STATUS_ALLOC_FAILED",
                 "CUDNN_STATUS_ALLOC_FAILED")


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA where there is none, or for a GPU index
    beyond the GPUs present, is a ``UserError``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but no CUDA GPU is available; use --device cpu or auto")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise UserError(f"device {name!r} requested but this machine has {count} CUDA GPU{'s' * (count != 1)} "
                        f"(cuda:0 to cuda:{count - 1}); pick one of them")
    return device


def autocast(device: torch.device, dtype: str):
    """bf16 autocast when asked for, else a no-op context."""
    if dtype != "bfloat16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def apply_cuda_settings(device: torch.device, tf32: bool, cudnn_benchmark: bool) -> None:
    """The opt-in CUDA speed settings of a search: TF32 float32 matmuls and cuDNN autotuning.

    Both change the numerics, so they are off unless asked for; on the CPU they do nothing. They are
    process-wide, and set to the config's values for every CUDA search.
    """
    if device.type != "cuda":
        return
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    torch.backends.cudnn.benchmark = cudnn_benchmark


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def out_of_memory(e: BaseException, hint: str) -> UserError | None:
    """A one-line ``UserError`` for an out-of-memory failure (CUDA or host), else None."""
    if isinstance(e, torch.cuda.OutOfMemoryError) or (
            isinstance(e, RuntimeError) and any(m in str(e) for m in _OOM_MESSAGES)):
        return UserError(f"out of memory: {hint}")
    return None


@contextlib.contextmanager
def out_of_memory_is_user_error(hint: str) -> Iterator[None]:
    """Turn an out-of-memory failure inside the block into the one-line ``UserError``."""
    try:
        yield
    except RuntimeError as e:
        oom = out_of_memory(e, hint)
        if oom:
            raise oom from None
        raise
