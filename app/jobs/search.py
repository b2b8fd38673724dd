"""Search jobs: ``run_search`` in a child process, its ticks as the job's progress, Pause and Stop through
the engine's events (it checkpoints and marks the run folder). Also the progress of runs started
elsewhere (the CLI, another machine), which are not jobs: the pages follow their run folders."""
from __future__ import annotations

import time
from collections import deque
from multiprocessing.synchronize import Event
from pathlib import Path

import torch

from llpf_core import Run, SearchConfig, TickEvent, UserError, run_search

from .child import WORK_THREADS, failures_reported, follow_child
from .supervisor import Job, Progress, Supervisor


class SearchJobs(Supervisor):
    def start_search(self, name: str, start: Path | None, end: Path | str | None, cfg: SearchConfig | None,
                     run_dir: Path, *, resume: bool = False, data_root: Path | None = None, owner: str = "") -> Job:
        """Start (or, with ``resume``, continue) a search into ``run_dir`` in the background.

        Refuses a name that is already running, and a new search into an existing run folder.
        """
        if not resume and (run_dir / "run.json").exists():
            raise UserError(f"run folder {run_dir} already exists; choose another run name or resume it")

        def work(job: Job, stop: Event, pause: Event) -> None:
            self._set(job, **self._search(job, start, end, cfg, run_dir, stop, pause, resume, data_root))

        return self._launch(Job(name, "search", owner, run_dir=run_dir, pausable=True), work)

    def _search(self, job: Job, start, end, cfg, run_dir: Path, stop: Event, pause: Event, resume: bool,
                data_root: Path | None) -> dict:
        """Run the search in a child process, following its ticks; returns the job's final status, error
        and message (the caller sets them: the demo has more to do first)."""
        self._set(job, status="running", message="loading the modes and data", run_dir=run_dir)

        def on_tick(tick: int, total: int, iterations: int, phase: str, wall_s: float) -> None:
            with self._lock:  # the search's own clock: queued events may arrive in bursts
                job._recent.append((wall_s, tick, iterations))
                job.progress = _rate(job._recent, tick, total)
                job.message = f"tick {tick} of {total} ({phase})"

        status, error, last = follow_child(job.name, _search_process, (start, end, cfg, run_dir, resume, data_root,
                                                                        stop, pause),
                                           on_tick, "resume the run from its checkpoint")
        return {"status": status, "error": error, "message": f"{status} at tick {last}"}


def _search_process(start, end, cfg, run_dir, resume, data_root, stop, pause, events) -> None:
    """Body of a search's child process: ``run_search``, reporting ticks and the outcome to ``events``."""
    torch.set_num_threads(WORK_THREADS)

    def on_tick(event: TickEvent) -> None:
        events.put(("progress", event.tick, event.total_ticks, event.metrics.get("iterations") or 0, event.phase,
                    event.metrics["wall_s"]))

    with failures_reported(events):
        run = run_search(start, end, cfg, run_dir, on_tick=on_tick, stop_event=stop, pause_event=pause,
                         resume=resume, data_root=data_root)
        events.put(("done", run.status, run.error, int(run.metrics["tick"].max()) if len(run.metrics) else 0))


def _rate(recent: deque, tick: int, total: int) -> Progress:
    """Speed over the last ticks seen (a window, so a pause or a slow phase shows quickly)."""
    progress = Progress(tick, total)
    if len(recent) >= 2:
        (t0, k0, _), (t1, k1, _) = recent[0], recent[-1]
        if t1 > t0 and k1 > k0:
            progress.ticks_per_s = (k1 - k0) / (t1 - t0)
            progress.iterations_per_s = sum(i for _, _, i in list(recent)[1:]) / (t1 - t0)
    return progress


def folder_progress(run: Run) -> Progress:
    """Progress of a run read from its folder alone (a CLI run): ticks and speed from metrics.csv."""
    cfg = run.config
    total = cfg.ticks + (cfg.bridge.ticks if cfg.algorithm == "cross_sphere" else 0)
    m = run.metrics
    if len(m) == 0:  # a method that writes its rows at its end (bezier, autoneb): its checkpoints count
        done = run.checkpoint_progress
        return Progress(*done) if done else Progress(0, total)
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
