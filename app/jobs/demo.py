"""The demo job, the teaching path: train two digits MLPs (reused when already in the workspace), connect
them with M2M, then compute the default landscape plane, each step in a child process."""
from __future__ import annotations

import os
from dataclasses import replace
from multiprocessing.synchronize import Event
from pathlib import Path

from llpf_core import UserError, apply_overrides, load_preset, load_run

from .child import JobStopped
from .landscape import LANDSCAPE_GRID, LandscapeJobs
from .search import SearchJobs, unique_run_name
from .supervisor import Job
from .training import TrainingJobs

DEMO_PRESET, DEMO_RECIPE, DEMO_SEEDS = "mlp-digits-m2m", "mlp-digits", (1, 2)
# The dashboard's demo is watched: a fifth of the preset's step over five times its ticks gives a smoother path
# that ends about as close to B (0.996^1500 and 0.98^300 both leave 0.2 % of the distance) and several
# seconds of search, time for the live charts to grow several times.
DEMO_OVERRIDES = ["ticks=1500", "phases.0.step_a=0.004"]


def demo_overrides() -> list[str]:
    """The demo's ``--set`` overrides: DEMO_OVERRIDES, then those in $LLPF_DEMO_SET (space-separated
    key=value items, e.g. ``ticks=6000 phases.0.step_a=0.001`` for a slower demo in class)."""
    return DEMO_OVERRIDES + os.environ.get("LLPF_DEMO_SET", "").split()


class DemoJobs(SearchJobs, LandscapeJobs, TrainingJobs):
    def start_demo(self, workspace: Path, name: str | None = None, *, owner: str = "") -> Job:
        """The demo into ``workspace``: its modes/ (reused) and runs/<name> (default: demo-<time>)."""
        name = name or unique_run_name(workspace / "runs", "demo", self.taken_names(owner))
        run_dir = workspace / "runs" / name

        def work(job: Job, stop: Event, pause: Event) -> None:
            paths = [(seed, workspace / "modes" / f"mlp-digits-seed{seed}.safetensors") for seed in DEMO_SEEDS]
            missing = [(seed, path) for seed, path in paths if not path.exists()]
            if missing:
                self._train(job, "mlp", "digits", missing, DEMO_RECIPE, "cpu", None, stop)
            with self._lock:
                job.modes = [path for _, path in paths]
            if stop.is_set():
                raise JobStopped("stopped before the search")
            cfg = apply_overrides(replace(load_preset(DEMO_PRESET), device="cpu"), demo_overrides())
            ended = self._search(job, *job.modes, cfg, run_dir, stop, pause, False, None)
            if ended["status"] == "finished":  # the default plane, for Home and Explore (digits: about a second)
                self._set(job, message="computing the landscape plane")
                try:
                    self._landscape(job, load_run(run_dir), None, LANDSCAPE_GRID, stop)
                except UserError as e:  # the path itself is fine: Explore names the problem on a retry
                    ended["message"] += f"; no landscape plane: {e}"
            self._set(job, **ended)  # finished only once the plane is there too

        return self._launch(Job(name, "demo", owner, run_dir=run_dir, pausable=True), work)
