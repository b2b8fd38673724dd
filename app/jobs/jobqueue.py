"""A queue of background jobs with at most ``limit`` running at once, shared fairly between workspaces.
No Streamlit, no torch.

Generic over job kinds: a job is a key, its owner (a visitor's workspace) and a start function.
``submit`` queues it and starts what may start; ``done`` frees its slot; ``cancel`` drops a queued job.
A free slot goes to the waiting job whose owner has the fewest jobs running, then whose owner was served
longest ago (round robin), then the one waiting longest: one visitor's many jobs do not push another's
back. An owner never has more than ``owner_running`` jobs running or ``owner_queued`` waiting. Start
functions run outside the queue's lock (they may take the caller's own lock).
"""
from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Hashable

from llpf_core import UserError


class JobQueue:
    """At most ``limit`` jobs running (``owner_running`` per owner); the rest wait, ``owner_queued`` per owner."""

    def __init__(self, limit: int, owner_running: int | None = None, owner_queued: int | None = None) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.owner_running = min(owner_running or limit, limit)
        self.owner_queued = owner_queued
        self._lock = threading.Lock()
        self._running: dict[Hashable, str] = {}  # key -> owner
        self._waiting: list[tuple[Hashable, str, Callable[[], None]]] = []
        self._served: dict[str, int] = {}  # owner -> the count of starts when it last had a job started
        self._starts = 0

    def submit(self, key: Hashable, start: Callable[[], None], owner: str = "") -> bool:
        """Start ``key`` now (True) or queue it (False); a UserError when its owner's queue is full."""
        with self._lock:
            queued = sum(o == owner for _, o, _ in self._waiting)
            if self.owner_queued is not None and queued >= self.owner_queued:
                raise UserError(f"this workspace already has {queued} job(s) queued, the most one workspace may "
                                f"queue on this server; wait for one to start, or stop one")
            self._waiting.append((key, owner, start))
            ready = self._take_ready()
            started = key in self._running
        for begin in ready:
            begin()
        return started

    def done(self, key: Hashable) -> None:
        """``key`` has ended: free its slot and start queued jobs while slots are free."""
        with self._lock:
            self._running.pop(key, None)
            ready = self._take_ready()
        for start in ready:
            start()

    def cancel(self, key: Hashable) -> bool:
        """Drop ``key`` from the queue; False when it is not waiting (running already, or unknown)."""
        with self._lock:
            for i, (waiting, _, _) in enumerate(self._waiting):
                if waiting == key:
                    del self._waiting[i]
                    return True
        return False

    def order(self) -> list[Hashable]:
        """The waiting keys in the order they would start as slots free, if no other job were submitted
        (an estimate: which slots free first can change it)."""
        with self._lock:
            waiting = [(key, owner) for key, owner, _ in self._waiting]
            running, served, starts = Counter(self._running.values()), dict(self._served), self._starts
        order = []
        while waiting:
            key, owner = waiting.pop(self._pick(waiting, running, served, capped=False))
            running[owner] += 1
            starts += 1
            served[owner] = starts
            order.append(key)
        return order

    def position(self, key: Hashable) -> int | None:
        """1 for the next job to start, None when ``key`` is not waiting."""
        order = self.order()
        return order.index(key) + 1 if key in order else None

    def snapshot(self) -> tuple[list, list]:
        """(running keys, waiting keys in their starting order)."""
        with self._lock:
            running = list(self._running)
        return running, self.order()

    def _take_ready(self) -> list[Callable[[], None]]:
        """Move the jobs that may start now from waiting to running (the lock is held); their start functions."""
        ready = []
        while len(self._running) < self.limit and self._waiting:
            index = self._pick([(k, o) for k, o, _ in self._waiting], Counter(self._running.values()), self._served)
            if index is None:
                break
            key, owner, start = self._waiting.pop(index)
            self._running[key] = owner
            self._starts += 1
            self._served[owner] = self._starts
            ready.append(start)
        return ready

    def _pick(self, waiting: list[tuple[Hashable, str]], running: Counter, served: dict[str, int],
              capped: bool = True) -> int | None:
        """The index in ``waiting`` of the job to start next; None when every owner waiting is at its limit
        (``capped``; without it, the owners at their limit come last)."""
        ranked = [((running[o] >= self.owner_running, running[o], served.get(o, 0), i), i)
                  for i, (_, o) in enumerate(waiting)]
        if capped:
            ranked = [r for r in ranked if not r[0][0]]
        return min(ranked)[1] if ranked else None
