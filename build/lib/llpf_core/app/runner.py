"""Background jobs of the dashboard: path searches, mode training, landscape planes and the demo, each in
a thread.

The threads never call Streamlit; they update plain data behind one lock, and pages read snapshots.
A search or a landscape plane runs in a child process that its thread supervises: it shares no GIL with
the server, whose page redraws otherwise slowed a small model's search several times over, and a crash in
it cannot take the server down. Its progress events come back through a queue; stop and pause are
process-shared events.
A single ``Registry`` lives per server process (``st.cache_resource`` in state.py), so a page refresh
or a second browser tab finds a running job again by its name. Runs started elsewhere (the CLI, another
machine) are not jobs: the pages follow their run folders instead (``folder_progress``).
"""
from __future__ import annotations

import multiprocessing
import os
import queue
import sys
import threading
import time
import traceback
import types
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from multiprocessing.synchronize import Event
from pathlib import Path

import torch
from jobqueue import JobQueue, max_jobs

from llpf_core import (
    Run,
    SearchConfig,
    TickEvent,
    UserError,
    apply_overrides,
    compute_landscape,
    load_preset,
    load_recipe,
    load_run,
    run_search,
    train_mode,
)

# Leave a core to the dashboard (server and browser): with every core busy, OpenMP's waiting threads
# slowed the digits demo's search by 10x or more on a 2-core machine.
SEARCH_THREADS = max(1, (os.cpu_count() or 1) - 1)
_SPAWN = multiprocessing.get_context("spawn")  # a fresh interpreter: no fork of a threaded server
_START_LOCK = threading.Lock()
DEMO_PRESET, DEMO_RECIPE, DEMO_SEEDS = "mlp-digits-m2m", "mlp-digits", (1, 2)
# The dashboard's demo is watched: a fifth of the preset's step over five times its ticks gives a smoother path
# that ends about as close to B (0.996^1500 and 0.98^300 both leave 0.2 % of the distance) and several
# seconds of search, time for the live charts to grow several times.
DEMO_OVERRIDES = ["ticks=1500", "phases.0.step_a=0.004"]
LANDSCAPE_GRID = 21  # points per side of a plane the dashboard computes unless told otherwise


def demo_overrides() -> list[str]:
    """The demo's ``--set`` overrides: DEMO_OVERRIDES, then those in $LLPF_DEMO_SET (space-separated
    key=value items, e.g. ``ticks=6000 phases.0.step_a=0.001`` for a slower demo in class)."""
    return DEMO_OVERRIDES + os.environ.get("LLPF_DEMO_SET", "").split()
LIVE = ("queued", "starting", "training", "running", "paused", "pausing", "stopping")


@dataclass
class Progress:
    """Where a search stands: ticks done out of planned, and its recent speed."""
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
    kind: str  # search | train | demo | landscape
    status: str = "starting"  # queued | starting | training | running | pausing | paused | stopping | stopped |
    #                            finished | failed
    message: str = ""
    error: str | None = None
    run_dir: Path | None = None
    modes: list[Path] = field(default_factory=list)
    progress: Progress = field(default_factory=Progress)
    started: float = field(default_factory=time.time)
    folder: Path | None = None  # where the job writes (default: run_dir); pages show it in that workspace only
    _recent: deque = field(default_factory=lambda: deque(maxlen=30), repr=False)  # (wall_s, tick, iterations)

    @property
    def live(self) -> bool:
        return self.status in LIVE


class Registry:
    """Every job of this server process, guarded by one lock. At most ``limit`` jobs run at once
    (default ``max_jobs()``: $LLPF_MAX_JOBS, one per GPU, or the cores minus one); the rest are
    ``queued`` and start in order when a slot frees."""

    def __init__(self, limit: int | None = None) -> None:
        self.queue = JobQueue(limit or max_jobs(gpus=torch.cuda.device_count()))
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._controls: dict[str, tuple] = {}  # name -> (stop event, pause event, thread)

    # --- reading ---------------------------------------------------------------------------------

    def get(self, name: str) -> Job | None:
        with self._lock:
            job = self._jobs.get(name)
            if job and job.status == "pausing" and _folder_status(job.run_dir) == "paused":
                job.status = "paused"  # the engine has checkpointed and marked the run paused
            if job and job.status == "queued":
                waiting = self.queue.snapshot()[1]
                if job.name in waiting:
                    job.message = (f"queued: position {waiting.index(job.name) + 1} of {len(waiting)}, "
                                   f"starts when one of the {self.queue.limit} job slot(s) frees")
            return replace(job, progress=replace(job.progress), modes=list(job.modes)) if job else None

    def jobs(self) -> list[Job]:
        with self._lock:
            names = list(self._jobs)
        return [job for job in map(self.get, names) if job]

    # --- starting --------------------------------------------------------------------------------

    def start_search(self, name: str, start: Path | None, end: Path | str | None, cfg: SearchConfig | None,
                     run_dir: Path, *, resume: bool = False, data_root: Path | None = None) -> Job:
        """Start (or, with ``resume``, continue) a search into ``run_dir`` in the background.

        Refuses a name that is already running, and a new search into an existing run folder.
        """
        if not resume and (run_dir / "run.json").exists():
            raise UserError(f"run folder {run_dir} already exists; choose another run name or resume it")

        def work(job: Job, stop: Event, pause: Event) -> None:
            self._set(job, **self._search(job, start, end, cfg, run_dir, stop, pause, resume, data_root))

        return self._launch(Job(name, "search", run_dir=run_dir), work)

    def start_training(self, name: str, model: str, dataset: str, seeds: list[int], recipe: str,
                       modes_dir: Path, *, device: str = "auto", data_root: Path | None = None) -> Job:
        """Train one mode per seed, one after another, into ``modes_dir``."""
        if not seeds:
            raise UserError("give at least one seed")
        paths = [modes_dir / f"{model}-{dataset}-seed{s}.safetensors" for s in seeds]
        taken = [p.name for p in paths if p.exists()]
        if taken:
            raise UserError(f"mode files already exist: {', '.join(taken)}; choose other seeds or delete them")

        def work(job: Job, stop: Event, _pause: Event) -> None:
            for seed, path in zip(seeds, paths):
                if stop.is_set():
                    self._set(job, status="stopped", message="stopped before the next seed")
                    return
                self._train(job, model, dataset, seed, path, recipe, device, data_root)
            self._set(job, status="finished", message=f"trained {len(seeds)} mode(s)")

        return self._launch(Job(name, "train", folder=modes_dir), work)

    def start_demo(self, workspace: Path, name: str | None = None) -> Job:
        """The teaching path: train two digits MLPs (reused when already in the workspace), then M2M."""
        with self._lock:  # job names are server-wide: two workspaces' demos of the same second differ
            taken = set(self._jobs)
        name = name or unique_run_name(workspace / "runs", "demo", taken)
        run_dir = workspace / "runs" / name

        def work(job: Job, stop: Event, pause: Event) -> None:
            modes = []
            for seed in DEMO_SEEDS:
                path = workspace / "modes" / f"mlp-digits-seed{seed}.safetensors"
                if not path.exists():
                    self._train(job, "mlp", "digits", seed, path, DEMO_RECIPE, "cpu", None)
                modes.append(path)
                with self._lock:
                    job.modes = list(modes)
            if stop.is_set():
                self._set(job, status="stopped", message="stopped before the search")
                return
            cfg = apply_overrides(replace(load_preset(DEMO_PRESET), device="cpu"), demo_overrides())
            ended = self._search(job, modes[0], modes[1], cfg, run_dir, stop, pause, False, None)
            if ended["status"] == "finished":  # the default plane, for Home and Explore (digits: about a second)
                self._set(job, message="computing the landscape plane")
                try:
                    self._landscape(job, load_run(run_dir), None, LANDSCAPE_GRID, stop)
                except UserError as e:  # the path itself is fine: Explore names the problem on a retry
                    ended["message"] += f"; no landscape plane: {e}"
            self._set(job, **ended)  # finished only once the plane is there too

        return self._launch(Job(name, "demo", run_dir=run_dir, folder=workspace), work)

    def start_landscape(self, run: Run, point: int | None = None, grid: int = LANDSCAPE_GRID) -> Job:
        """Compute (or continue) the landscape plane through ``run``'s point at tick ``point`` (None: the
        one farthest from the straight line) in the background, into the run folder. The job is called
        ``landscape-<run name>``: one plane at a time per run."""
        def work(job: Job, stop: Event, _pause: Event) -> None:
            self._set(job, status="running", message="loading the modes and data")
            tick, done, total = self._landscape(job, run, point, grid, stop)
            self._set(job, status="finished" if done == total else "stopped",
                      message=f"{done} of {total} grid points through the point at tick {tick}")

        return self._launch(Job(f"landscape-{run.name}", "landscape", folder=run.path), work)

    # --- controlling -----------------------------------------------------------------------------

    def pause(self, name: str) -> None:
        self._control(name, pause=True)

    def resume(self, name: str) -> None:
        """Continue a paused job in place."""
        self._control(name, pause=False)

    def stop(self, name: str) -> None:
        """Stop a running job, or cancel a queued one (it never starts)."""
        if self.queue.cancel(name):
            with self._lock:
                job = self._jobs[name]
                job.status, job.message = "stopped", "cancelled while queued"
                del self._controls[name]
            return
        self._control(name, stop=True)

    def wait(self, name: str, timeout: float | None = None) -> Job | None:
        """Block until the job's thread ends (tests and shutdown), also through its time in the queue;
        returns its last state."""
        deadline = None if timeout is None else time.time() + timeout
        while True:
            with self._lock:
                control = self._controls.get(name)
            if not control or control[2].ident is not None:
                break  # started (or cancelled while queued)
            if deadline is not None and time.time() >= deadline:
                return self.get(name)
            time.sleep(0.05)
        if control:
            control[2].join(None if deadline is None else max(0.0, deadline - time.time()))
        return self.get(name)

    # --- the threads -----------------------------------------------------------------------------

    def _launch(self, job: Job, work) -> Job:
        stop, pause = _SPAWN.Event(), _SPAWN.Event()

        def target() -> None:
            try:
                work(job, stop, pause)
            except UserError as e:
                self._set(job, status="failed", error=str(e))
            except Exception as e:  # noqa: BLE001  (a job's crash must not take the app down)
                traceback.print_exc()
                self._set(job, status="failed", error=f"{type(e).__name__}: {e}")
            finally:
                self.queue.done(job.name)

        if job.folder is None:
            job.folder = job.run_dir
        job.status = "queued"
        thread = threading.Thread(target=target, name=f"llpf-{job.name}", daemon=True)
        with self._lock:
            old = self._jobs.get(job.name)
            if old and old.live:
                raise UserError(f"job {job.name!r} is already {old.status}; stop it first")
            self._jobs[job.name] = job
            self._controls[job.name] = (stop, pause, thread)

        def start() -> None:
            self._set(job, status="starting", message="")
            thread.start()
        self.queue.submit(job.name, start)
        return self.get(job.name)

    def _control(self, name: str, pause: bool | None = None, stop: bool = False) -> None:
        with self._lock:
            job, control = self._jobs.get(name), self._controls.get(name)
            if not job or not control or not control[2].is_alive():
                raise UserError(f"no running job {name!r} in this dashboard; resume it from its checkpoint")
            stop_event, pause_event, _ = control
            if stop:
                stop_event.set()
                job.status = "stopping"
            elif pause:
                pause_event.set()
                job.status = "pausing" if job.status != "paused" else "paused"
            else:
                pause_event.clear()
                if job.status in ("paused", "pausing"):
                    job.status = "running"

    def _set(self, job: Job, **fields) -> None:
        with self._lock:
            for k, v in fields.items():
                setattr(job, k, v)

    def _train(self, job: Job, model: str, dataset: str, seed: int, path: Path, recipe: str, device: str,
               data_root: Path | None) -> None:
        self._set(job, status="training", message=f"training {model} on {dataset}, seed {seed}: loading data")

        def on_epoch(epoch: int, epochs: int, loss: float) -> None:
            self._set(job, message=f"training {model} on {dataset}, seed {seed}: epoch {epoch}/{epochs}, "
                                   f"loss {loss:.4f}")
        train_mode(model, dataset, seed, path, load_recipe(recipe), device, data_root, on_epoch, recipe)
        with self._lock:
            job.modes.append(path)

    def _landscape(self, job: Job, run: Run, point: int | None, grid: int, stop: Event) -> tuple[int, int, int]:
        """``compute_landscape`` in a child process, with its progress in the job's message (and, for a
        landscape job, in its progress, grid points as ticks; a demo's progress stays its search's) and
        Stop; returns the plane's point tick and its grid points done and in all."""
        def on_progress(done: int, total: int) -> None:
            message = f"landscape plane: {done} of {total} grid points"
            if job.kind == "landscape":
                self._set(job, progress=Progress(done, total), message=message)
            else:
                self._set(job, message=message)

        return self._child(job, _landscape_process, (run.path, point, grid, stop), on_progress,
                           "compute it again to continue after the grid points it saved")

    def _child(self, job: Job, body, args: tuple, on_progress, lost_hint: str) -> tuple:
        """Run ``body(*args, events)`` in a spawned process and follow it: its ("progress", ...) events go
        to ``on_progress``; returns the items of its ("done", ...) event and raises its ("failed", message)
        as a UserError."""
        events = _SPAWN.Queue()
        process = _SPAWN.Process(target=body, name=f"llpf-{job.name}", daemon=True, args=(*args, events))
        with _main_script_hidden():
            process.start()
        while True:
            try:
                kind, *item = events.get(timeout=0.5)
            except queue.Empty:
                if process.is_alive():
                    continue
                raise RuntimeError(f"the {job.kind} process ended without a word (exit code {process.exitcode}); "
                                   f"{lost_hint}") from None
            if kind == "progress":
                on_progress(*item)
                continue
            process.join()
            if kind == "failed":
                raise UserError(item[0])
            return tuple(item)

    def _search(self, job: Job, start, end, cfg, run_dir: Path, stop: Event,
                pause: Event, resume: bool, data_root: Path | None) -> dict:
        """Run the search in a child process, following its ticks; returns the job's final status, error
        and message (the caller sets them: the demo has more to do first)."""
        self._set(job, status="running", message="loading the modes and data", run_dir=run_dir)

        def on_tick(tick: int, total: int, iterations: int, phase: str, wall_s: float) -> None:
            with self._lock:  # the search's own clock: queued events may arrive in bursts
                job._recent.append((wall_s, tick, iterations))
                job.progress = _rate(job._recent, tick, total)
                job.message = f"tick {tick} of {total} ({phase})"

        status, error, last = self._child(job, _search_process, (start, end, cfg, run_dir, resume, data_root, stop,
                                                                 pause), on_tick, "resume the run from its checkpoint")
        return {"status": status, "error": error, "message": f"{status} at tick {last}"}


@contextmanager
def _main_script_hidden():
    """Spawn re-runs the parent's ``__main__`` in the child. Under Streamlit (and AppTest) that is the
    page script being run, which must not run again in a search process; hide it while the child starts."""
    with _START_LOCK:
        script = sys.modules["__main__"]
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            yield
        finally:
            sys.modules["__main__"] = script


@contextmanager
def _failures_reported(events):
    """In a child process: a failure becomes a ("failed", one line) event for the dashboard."""
    try:
        yield
    except UserError as e:
        events.put(("failed", str(e)))
    except BaseException as e:  # noqa: BLE001  (reported to the dashboard; the run folder says failed)
        traceback.print_exc()
        events.put(("failed", f"{type(e).__name__}: {e}"))


def _search_process(start, end, cfg, run_dir, resume, data_root, stop, pause, events) -> None:
    """Body of a search's child process: ``run_search``, reporting ticks and the outcome to ``events``."""
    torch.set_num_threads(SEARCH_THREADS)

    def on_tick(event: TickEvent) -> None:
        events.put(("progress", event.tick, event.total_ticks, event.metrics.get("iterations") or 0, event.phase,
                    event.metrics["wall_s"]))

    with _failures_reported(events):
        run = run_search(start, end, cfg, run_dir, on_tick=on_tick, stop_event=stop, pause_event=pause,
                         resume=resume, data_root=data_root)
        events.put(("done", run.status, run.error, int(run.metrics["tick"].max()) if len(run.metrics) else 0))


def _landscape_process(run_dir, point, grid, stop, events) -> None:
    """Body of a landscape plane's child process: ``compute_landscape`` (on the GPU when there is one),
    reporting grid points and the outcome to ``events``."""
    torch.set_num_threads(SEARCH_THREADS)
    with _failures_reported(events):
        plane = compute_landscape(load_run(run_dir), point, grid, device="auto", stop_event=stop,
                                  on_progress=lambda done, total: events.put(("progress", done, total)))
        events.put(("done", plane.info["point_tick"], len(plane.grid), plane.info["grid"] ** 2))


def _rate(recent: deque, tick: int, total: int) -> Progress:
    """Speed over the last ticks seen (a window, so a pause or a slow phase shows quickly)."""
    progress = Progress(tick, total)
    if len(recent) >= 2:
        (t0, k0, _), (t1, k1, _) = recent[0], recent[-1]
        if t1 > t0 and k1 > k0:
            progress.ticks_per_s = (k1 - k0) / (t1 - t0)
            progress.iterations_per_s = sum(i for _, _, i in list(recent)[1:]) / (t1 - t0)
    return progress


def _folder_status(run_dir: Path | None) -> str | None:
    try:
        return load_run(run_dir).status if run_dir else None
    except UserError:
        return None


def folder_progress(run: Run) -> Progress:
    """Progress of a run read from its folder alone (a CLI run): ticks and speed from metrics.csv."""
    cfg = run.config
    total = cfg.ticks + (cfg.bridge.ticks if cfg.algorithm == "cross_sphere" else 0)
    m = run.metrics
    if len(m) == 0:
        return Progress(0, total)
    progress = Progress(int(m["tick"].iloc[-1]), total)
    tail = m.tail(30)
    span = float(tail["wall_s"].iloc[-1] - tail["wall_s"].iloc[0])
    if len(tail) >= 2 and span > 0:
        progress.ticks_per_s = (len(tail) - 1) / span
        progress.iterations_per_s = float(tail["iterations"].iloc[1:].sum()) / span
    return progress


def unique_run_name(runs_dir: Path, prefix: str, taken: set[str] = frozenset()) -> str:
    """``prefix-YYYYmmdd-HHMMSS``, with a counter when that folder exists already (or the name is taken)."""
    base = f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    name, k = base, 2
    while (runs_dir / name).exists() or name in taken:
        name, k = f"{base}-{k}", k + 1
    return name
