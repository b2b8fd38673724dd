"""How much of the server the dashboard's jobs may take, from the operator's environment variables. No
Streamlit, no torch.

- ``LLPF_MAX_JOBS``: jobs running at once on the server (default: one per GPU, else the cores minus one).
- ``LLPF_VISITOR_MAX_JOBS``: jobs one workspace may have running at once (default: ``LLPF_MAX_JOBS``).
- ``LLPF_VISITOR_MAX_QUEUED``: jobs one workspace may have waiting in the queue (default 8).
- ``LLPF_SWEEP_MAX_WORKERS``: workers of one sweep started from the dashboard (default: the cores).
- ``LLPF_SWEEP_MAX_PAIRS``: pairs of one sweep started from the dashboard (default 32).
"""
from __future__ import annotations

import os
from collections.abc import Mapping

from llpf_core import UserError

DEFAULT_VISITOR_QUEUED = 8
DEFAULT_SWEEP_PAIRS = 32


def _whole(environ: Mapping[str, str], name: str, default: int) -> int:
    """``environ[name]`` as a whole number of at least 1, else ``default``; a UserError for anything else."""
    text = environ.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"{name} must be a whole number of at least 1, got {text!r}; fix it and restart the server")
    return int(text)


def max_jobs(environ: Mapping[str, str] | None = None, cpu_count: int | None = None, gpus: int = 0) -> int:
    """``LLPF_MAX_JOBS``, else one job per GPU where there are GPUs, else the cores minus one (at least 1)."""
    environ = os.environ if environ is None else environ
    cores = cpu_count if cpu_count is not None else os.cpu_count() or 1
    return _whole(environ, "LLPF_MAX_JOBS", gpus or max(1, cores - 1))


def visitor_max_jobs(server_limit: int, environ: Mapping[str, str] | None = None) -> int:
    """``LLPF_VISITOR_MAX_JOBS``: running jobs per workspace (default and most: the server's limit)."""
    return min(server_limit, _whole(os.environ if environ is None else environ, "LLPF_VISITOR_MAX_JOBS", server_limit))


def visitor_max_queued(environ: Mapping[str, str] | None = None) -> int:
    """``LLPF_VISITOR_MAX_QUEUED``: queued jobs per workspace."""
    return _whole(os.environ if environ is None else environ, "LLPF_VISITOR_MAX_QUEUED", DEFAULT_VISITOR_QUEUED)


def sweep_max_workers(environ: Mapping[str, str] | None = None, cpu_count: int | None = None) -> int:
    """``LLPF_SWEEP_MAX_WORKERS``: workers of one sweep from the dashboard (default: the server's cores)."""
    cores = cpu_count if cpu_count is not None else os.cpu_count() or 1
    return _whole(os.environ if environ is None else environ, "LLPF_SWEEP_MAX_WORKERS", cores)


def sweep_max_pairs(environ: Mapping[str, str] | None = None) -> int:
    """``LLPF_SWEEP_MAX_PAIRS``: pairs of one sweep from the dashboard."""
    return _whole(os.environ if environ is None else environ, "LLPF_SWEEP_MAX_PAIRS", DEFAULT_SWEEP_PAIRS)
