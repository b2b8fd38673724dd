"""The supervisor of the dashboard's background jobs: what a job is, the registry of them, the queue they
wait in, and Pause/Resume/Stop. Each kind of job (search, landscape, layerwise, training, sweep, demo) adds its own
``start_*`` method in a module of its own (see ``jobs/__init__.py``).

Each job has a thread here that never calls Streamlit: it updates plain data behind one lock, and pages
read copies. The work itself runs in a child process (``jobs.child``), so it shares no GIL with the
server and a crash in it cannot take the server down. A job belongs to an owner, the visitor's
workspace: its name is unique within that owner, and a visitor sees and controls only their own jobs
(``VisitorJobs``). ``owner=None`` in the registry's own methods means "any owner" (the operator's view).
"""
from __future__ import annotations

import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from multiprocessing.synchronize import Event
from pathlib import Path

from llpf_core import UserError, load_run

from .child import SPAWN, JobStopped
from .jobqueue import JobQueue

LIVE = ("queued", "starting", "training", "running", "paused", "pausing", "stopping")

Key = tuple[str, str]  # (owner, name)


@dataclass
class Progress:
    """Where a job stands: units done out of planned (ticks, grid points, pairs), and its recent speed."""
    tick: int = 0
    total: int = 0
    ticks_per_s: float | None = None
    iterations_per_s: float | None = None

    @property
    def fraction(self) -> float:
        return min(self.tick / self.total, 1.0) if self.total else 0.0

    @property
    def eta_s(self) -> float | None:
        return (self.total - self.tick) / self.ticks_per_s if self.ticks_per_s else None


@dataclass
class Job:
    """One background job. Pages get copies (``Registry.get``); only the job's thread mutates it."""
    name: str
    kind: str  # search | train | demo | landscape | layerwise | sweep
    owner: str = ""  # the workspace it belongs to
    status: str = "starting"  # queued | starting | training | running | pausing | paused | stopping | stopped |
    #                            finished | failed
    message: str = ""
    error: str | None = None
    run_dir: Path | None = None  # a search's run folder, a sweep's folder
    modes: list[Path] = field(default_factory=list)
    progress: Progress = field(default_factory=Progress)
    started: float = field(default_factory=time.time)
    queue_position: int | None = None  # 1 for the next to start, while queued
    pausable: bool = False
    _recent: deque = field(default_factory=lambda: deque(maxlen=30), repr=False)  # (wall_s, tick, iterations)

    @property
    def live(self) -> bool:
        return self.status in LIVE


class Supervisor:
    """Every job of this server process, guarded by one lock, started through one ``JobQueue``."""

    def __init__(self, queue: JobQueue) -> None:
        self.queue = queue
        self._lock = threading.Lock()
        self._jobs: dict[Key, Job] = {}
        self._controls: dict[Key, tuple] = {}  # key -> (stop event, pause event, thread)

    # --- reading ---------------------------------------------------------------------------------

    def get(self, name: str, owner: str | None = None) -> Job | None:
        """A copy of job ``name`` (of ``owner``; None: the newest of that name of any owner)."""
        with self._lock:
            key = self._key(name, owner)
            job = self._jobs.get(key) if key else None
            if job is None:
                return None
            if job.status == "pausing" and _folder_status(job.run_dir) == "paused":
                job.status = "paused"  # the engine has checkpointed and marked the run paused
            job.queue_position = self.queue.position(key) if job.status == "queued" else None
            if job.queue_position:
                job.message = (f"queued: position {job.queue_position} of {len(self.queue.order())}, starts when "
                               f"one of the {self.queue.limit} job slot(s) frees")
            return replace(job, progress=replace(job.progress), modes=list(job.modes))

    def jobs(self, owner: str | None = None) -> list[Job]:
        """Copies of every job (of ``owner``; None: of everyone), oldest first."""
        with self._lock:
            keys = [k for k in self._jobs if owner is None or k[0] == owner]
        return [job for job in (self.get(name, o) for o, name in keys) if job]

    def counts(self) -> tuple[int, int, int]:
        """(jobs running, jobs queued, job slots) on the whole server."""
        running, waiting = self.queue.snapshot()
        return len(running), len(waiting), self.queue.limit

    # --- controlling -----------------------------------------------------------------------------

    def pause(self, name: str, owner: str | None = None) -> None:
        self._control(name, owner, pause=True)

    def resume(self, name: str, owner: str | None = None) -> None:
        """Continue a paused job in place."""
        self._control(name, owner, pause=False)

    def stop(self, name: str, owner: str | None = None) -> None:
        """Stop a running job, or cancel a queued one (it never starts)."""
        with self._lock:
            key = self._key(name, owner)
        if key and self.queue.cancel(key):
            with self._lock:
                job = self._jobs[key]
                job.status, job.message = "stopped", "cancelled while queued"
                del self._controls[key]
            return
        self._control(name, owner, stop=True)

    def wait(self, name: str, timeout: float | None = None, owner: str | None = None) -> Job | None:
        """Block until the job's thread ends (tests and shutdown), also through its time in the queue;
        returns its last state."""
        deadline = None if timeout is None else time.time() + timeout
        while True:
            with self._lock:
                key = self._key(name, owner)
                control = self._controls.get(key) if key else None
            if not control or control[2].ident is not None:
                break  # started (or cancelled while queued)
            if deadline is not None and time.time() >= deadline:
                return self.get(name, owner)
            time.sleep(0.05)
        if control:
            control[2].join(None if deadline is None else max(0.0, deadline - time.time()))
        return self.get(name, owner)

    # --- for the kinds ---------------------------------------------------------------------------

    def taken_names(self, owner: str) -> set[str]:
        with self._lock:
            return {name for o, name in self._jobs if o == owner}

    def _launch(self, job: Job, work: Callable[[Job, Event, Event], None]) -> Job:
        """Register ``job`` and queue ``work(job, stop, pause)`` to run in its thread when a slot frees.
        Refuses a name of this owner that is still live, and a full queue for this owner."""
        stop, pause = SPAWN.Event(), SPAWN.Event()
        key = (job.owner, job.name)

        def target() -> None:
            try:
                work(job, stop, pause)
            except JobStopped as e:
                self._set(job, status="stopped", message=str(e))
            except UserError as e:
                self._set(job, status="failed", error=str(e))
            except Exception as e:  # noqa: BLE001  (a job's crash must not take the app down)
                traceback.print_exc()
                self._set(job, status="failed", error=f"{type(e).__name__}: {e}")
            finally:
                self.queue.done(key)

        def start() -> None:
            self._set(job, status="starting", message="")
            thread.start()

        job.status = "queued"
        thread = threading.Thread(target=target, name=f"llpf-{job.name}", daemon=True)
        with self._lock:
            old = self._jobs.get(key)
            if old and old.live:
                raise UserError(f"job {job.name!r} is already {old.status}; stop it first")
            self._jobs[key], self._controls[key] = job, (stop, pause, thread)
        try:
            self.queue.submit(key, start, job.owner)
        except UserError:
            with self._lock:
                self._jobs.pop(key)
                self._controls.pop(key)
                if old:
                    self._jobs[key] = old
            raise
        return self.get(job.name, job.owner)

    def _control(self, name: str, owner: str | None, pause: bool | None = None, stop: bool = False) -> None:
        with self._lock:
            key = self._key(name, owner)
            job, control = self._jobs.get(key), self._controls.get(key)
            if not job or not control or not control[2].is_alive():
                raise UserError(f"no running job {name!r} in this dashboard; resume it from its checkpoint")
            stop_event, pause_event, _ = control
            if stop:
                stop_event.set()
                job.status = "stopping"
            elif not job.pausable:
                raise UserError(f"a {job.kind} job cannot pause; stop it instead")
            elif pause:
                pause_event.set()
                job.status = "pausing" if job.status != "paused" else "paused"
            else:
                pause_event.clear()
                if job.status in ("paused", "pausing"):
                    job.status = "running"

    def _key(self, name: str, owner: str | None) -> Key | None:
        """The key of job ``name`` (the lock is held): of ``owner``, or the newest of any owner."""
        if owner is not None:
            return (owner, name)
        found = [k for k in self._jobs if k[1] == name]
        return max(found, key=lambda k: self._jobs[k].started) if found else None

    def _set(self, job: Job, **fields) -> None:
        with self._lock:
            for k, v in fields.items():
                setattr(job, k, v)


class VisitorJobs:
    """One visitor's desk at the registry: every call is about their own workspace's jobs."""

    def __init__(self, registry, owner: str) -> None:
        self.registry, self.owner = registry, owner

    def jobs(self) -> list[Job]:
        return self.registry.jobs(self.owner)

    def get(self, name: str) -> Job | None:
        return self.registry.get(name, self.owner)

    def pause(self, name: str) -> None:
        self.registry.pause(name, self.owner)

    def resume(self, name: str) -> None:
        self.registry.resume(name, self.owner)

    def stop(self, name: str) -> None:
        self.registry.stop(name, self.owner)

    def start_search(self, *args, **kwargs) -> Job:
        return self.registry.start_search(*args, owner=self.owner, **kwargs)

    def start_training(self, *args, **kwargs) -> Job:
        return self.registry.start_training(*args, owner=self.owner, **kwargs)

    def start_demo(self, *args, **kwargs) -> Job:
        return self.registry.start_demo(*args, owner=self.owner, **kwargs)

    def start_landscape(self, *args, **kwargs) -> Job:
        return self.registry.start_landscape(*args, owner=self.owner, **kwargs)

    def start_layerwise(self, *args, **kwargs) -> Job:
        return self.registry.start_layerwise(*args, owner=self.owner, **kwargs)

    def start_sweep(self, *args, **kwargs) -> Job:
        return self.registry.start_sweep(*args, owner=self.owner, **kwargs)

    def resume_sweep(self, *args, **kwargs) -> Job:
        return self.registry.resume_sweep(*args, owner=self.owner, **kwargs)


def _folder_status(run_dir: Path | None) -> str | None:
    try:
        return load_run(run_dir).status if run_dir and (run_dir / "run.json").exists() else None
    except UserError:
        return None
