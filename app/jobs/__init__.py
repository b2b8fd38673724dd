"""The dashboard's background jobs: one registry and one queue for every kind of job.

- ``supervisor``: ``Job``, the registry's core (Pause/Resume/Stop, reading), ``VisitorJobs``
- ``jobqueue``: the fair queue (a job slot limit for the server and one for each workspace)
- ``limits``: the operator's limits, from environment variables
- ``child``: a job's work in a child process, followed from its thread
- ``search``, ``landscape``, ``layerwise``, ``training``, ``sweep``, ``demo``: one module per kind, each adding its
  ``start_*`` method

The server has one ``Registry`` (``server_registry``), a module-level object: it lives as long as the
server process, and nothing a visitor sends (Streamlit's "Clear cache" included, which empties
``st.cache_resource``) can drop it. Runs started elsewhere (the CLI, another machine) are not jobs: the
pages follow their run folders instead (``folder_progress``).
"""
from __future__ import annotations

import threading

import torch

from .demo import DemoJobs
from .jobqueue import JobQueue
from .layerwise import LayerwiseJobs
from .limits import max_jobs, visitor_max_jobs, visitor_max_queued
from .search import folder_progress, unique_run_name  # noqa: F401  (for the pages)
from .supervisor import VisitorJobs
from .sweep import SweepJobs


class Registry(DemoJobs, SweepJobs, LayerwiseJobs):
    """Every job of this server process. At most ``limit`` run at once (default ``max_jobs()``:
    $LLPF_MAX_JOBS, one per GPU, or the cores minus one), at most $LLPF_VISITOR_MAX_JOBS of one workspace,
    and one workspace may have $LLPF_VISITOR_MAX_QUEUED waiting; the rest of the jobs are ``queued``."""

    def __init__(self, limit: int | None = None) -> None:
        limit = limit or max_jobs(gpus=torch.cuda.device_count())
        super().__init__(JobQueue(limit, visitor_max_jobs(limit), visitor_max_queued()))

    def visitor(self, owner: str) -> VisitorJobs:
        """The registry as the visitor with workspace ``owner`` may use it: their own jobs only."""
        return VisitorJobs(self, owner)


_SERVER: Registry | None = None
_SERVER_LOCK = threading.Lock()


def server_registry() -> Registry:
    """The job registry of this server process, shared by every session and tab; made on first use."""
    global _SERVER
    with _SERVER_LOCK:
        if _SERVER is None:
            _SERVER = Registry()
        return _SERVER
