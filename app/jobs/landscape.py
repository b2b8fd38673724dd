"""Landscape jobs: ``compute_landscape`` in a child process, its grid points as the job's progress, Stop
through the engine's event (the grid points done stay saved and a later job continues after them)."""
from __future__ import annotations

from multiprocessing.synchronize import Event

import torch

from llpf_core import Run, compute_landscape, load_run

from .child import WORK_THREADS, failures_reported, follow_child
from .supervisor import Job, Progress, Supervisor

LANDSCAPE_GRID = 21  # points per side of a plane the dashboard computes unless told otherwise


class LandscapeJobs(Supervisor):
    def start_landscape(self, run: Run, point: int | None = None, grid: int = LANDSCAPE_GRID, *,
                        owner: str = "") -> Job:
        """Compute (or continue) the landscape plane through ``run``'s point at tick ``point`` (None: the
        one farthest from the straight line) in the background, into the run folder. The job is called
        ``landscape-<run name>``: one plane at a time per run."""
        def work(job: Job, stop: Event, _pause: Event) -> None:
            self._set(job, status="running", message="loading the modes and data")
            tick, done, total = self._landscape(job, run, point, grid, stop)
            self._set(job, status="finished" if done == total else "stopped",
                      message=f"{done} of {total} grid points through the point at tick {tick}")

        return self._launch(Job(f"landscape-{run.name}", "landscape", owner), work)

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

        return follow_child(job.name, _landscape_process, (run.path, point, grid, stop), on_progress,
                            "compute it again to continue after the grid points it saved")


def _landscape_process(run_dir, point, grid, stop, events) -> None:
    """Body of a landscape plane's child process: ``compute_landscape`` (on the GPU when there is one),
    reporting grid points and the outcome to ``events``."""
    torch.set_num_threads(WORK_THREADS)
    with failures_reported(events):
        plane = compute_landscape(load_run(run_dir), point, grid, device="auto", stop_event=stop,
                                  on_progress=lambda done, total: events.put(("progress", done, total)))
        events.put(("done", plane.info["point_tick"], len(plane.grid), plane.info["grid"] ** 2))
