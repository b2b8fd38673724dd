"""A first-come queue of background jobs with at most ``limit`` running at once. No Streamlit, no torch.

Generic over job kinds: a job is a name and a start function. ``submit`` starts it at once when a slot
is free, else queues it; ``done`` frees its slot and starts the next queued job, in order; ``cancel``
drops a queued job. Start functions run outside the queue's lock (they may take the caller's own lock).
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable

from llpf_core import UserError


def max_jobs(environ: dict | None = None, cpu_count: int | None = None, gpus: int = 0) -> int:
    """``LLPF_MAX_JOBS``, else one job per GPU where there are GPUs, else the cores minus one (at least 1)."""
    environ = os.environ if environ is None else environ
    text = environ.get("LLPF_MAX_JOBS", "").strip()
    if text:
        if not text.isdigit() or int(text) < 1:
            raise UserError(f"LLPF_MAX_JOBS must be a whole number of at least 1, got {text!r}; "
                            f"fix it and restart the server")
        return int(text)
    if gpus:
        return gpus
    return max(1, (cpu_count if cpu_count is not None else os.cpu_count() or 1) - 1)


class JobQueue:
    """At most ``limit`` jobs running; the rest wait in submission order."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._lock = threading.Lock()
        self._running: set[str] = set()
        self._waiting: list[tuple[str, Callable[[], None]]] = []

    def submit(self, name: str, start: Callable[[], None]) -> bool:
        """Start ``name`` now (True) or queue it (False)."""
        with self._lock:
            now = len(self._running) < self.limit and not self._waiting
            if now:
                self._running.add(name)
            else:
                self._waiting.append((name, start))
        if now:
            start()
        return now

    def done(self, name: str) -> None:
        """``name`` has ended: free its slot and start queued jobs while slots are free."""
        with self._lock:
            self._running.discard(name)
            ready = []
            while self._waiting and len(self._running) < self.limit:
                next_name, start = self._waiting.pop(0)
                self._running.add(next_name)
                ready.append(start)
        for start in ready:
            start()

    def cancel(self, name: str) -> bool:
        """Drop ``name`` from the queue; False when it is not waiting (running already, or unknown)."""
        with self._lock:
            for i, (waiting, _) in enumerate(self._waiting):
                if waiting == name:
                    del self._waiting[i]
                    return True
        return False

    def position(self, name: str) -> int | None:
        """1 for the next job to start, None when ``name`` is not waiting."""
        with self._lock:
            names = [n for n, _ in self._waiting]
        return names.index(name) + 1 if name in names else None

    def snapshot(self) -> tuple[list[str], list[str]]:
        """(running names, waiting names in order)."""
        with self._lock:
            return sorted(self._running), [n for n, _ in self._waiting]
