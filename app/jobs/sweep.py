"""Sweep jobs: ``python -m llpf_core sweep`` as a child process of the server (Ray never runs inside the
server), one job in the queue like any other, its finished pairs as the job's progress. Stop sends it
SIGINT, as Ctrl-C would: the sweep marks its running pairs interrupted and a later Resume finishes them.

A sweep started from the dashboard is bounded: at most ``sweep_max_pairs()`` pairs and
``sweep_max_workers()`` workers (``jobs.limits``), and its folder is a plain name under the visitor's
``sweeps/``. Its inputs are checked here, before anything starts, so a refusal is shown where the user
clicked.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from multiprocessing.synchronize import Event
from pathlib import Path

import confine

import llpf_core
from llpf_core import UserError, list_datasets, list_models, list_presets, preset_info, read_sweep

from .limits import sweep_max_pairs, sweep_max_workers
from .supervisor import Job, Progress, Supervisor

# Where `python -m llpf_core` finds the engine: the checkout's root, or site-packages when installed (not
# the package's own folder, whose modules would shadow top-level ones).
ENGINE_ROOT = Path(llpf_core.__file__).resolve().parent.parent
POLL_S = 0.5  # how often the job looks at its process and folder
REPEAT_STOP_S = 10.0  # Stop repeats its SIGINT this often until the sweep ends (as a second Ctrl-C would)


class SweepJobs(Supervisor):
    def start_sweep(self, sweeps_dir: Path, name: str, *, model: str, dataset: str, pairs: int, seed: int = 1,
                    workers: int = 1, preset: str | None = None, algorithm: str | None = None, owner: str = "") -> Job:
        """Start a new sweep into ``sweeps_dir/name`` (a plain folder name) in the background."""
        out = sweeps_dir / confine.plain_name(name, "sweep name")
        if out.exists():
            raise UserError(f"a sweep called {name!r} exists already; choose another name, or resume it below")
        if model not in list_models():
            raise UserError(f"unknown model {model!r}; choose one of {', '.join(list_models())}")
        if dataset not in list_datasets():
            raise UserError(f"unknown dataset {dataset!r}; choose one of {', '.join(list_datasets())}")
        most_pairs = sweep_max_pairs()
        if not 1 <= pairs <= most_pairs:
            raise UserError(f"a sweep from the dashboard has 1 to {most_pairs} pairs on this server, got {pairs}; "
                            f"run larger sweeps with the `sweep` command")
        _check_workers(workers)
        if preset and preset not in {p.name for p in list_presets()}:  # a name from the list, never a path
            raise UserError(f"unknown preset {preset[:60]!r}; choose one of the model's presets")
        if preset and preset_info(preset).model != model:
            raise UserError(f"preset {preset} is for model {preset_info(preset).model!r}, not {model!r}; "
                            f"choose one of {model}'s presets")
        # Without a preset the sweep command resolves each method's default, as `connect` does.
        args = ["--model", model, "--dataset", dataset, "--pairs", str(pairs), "--seed", str(seed),
                "--workers", str(workers), *(["--preset", preset] if preset else []),
                *(["--algorithm", algorithm] if algorithm else [])]
        return self._launch(Job(f"sweep-{name}", "sweep", owner, run_dir=out), self._sweep_work(out, args, workers))

    def resume_sweep(self, out: Path, *, workers: int = 1, owner: str = "") -> Job:
        """Finish the sweep in ``out`` (its failed or interrupted pairs) in the background, with ``workers``
        (default 1: in one process, without Ray) within the server's cap."""
        read_sweep(out)  # a UserError when the folder holds no sweep
        _check_workers(workers)
        args = ["--resume", "--workers", str(workers)]
        return self._launch(Job(f"sweep-{out.name}", "sweep", owner, run_dir=out), self._sweep_work(out, args, workers))

    def _sweep_work(self, out: Path, args: list[str], workers: int):
        def work(job: Job, stop: Event, _pause: Event) -> None:
            self._set(job, status="running", message="training the modes" + (", starting Ray" if workers > 1 else ""))
            with tempfile.TemporaryFile("w+") as stderr:  # a file: a pipe nobody reads could fill and stall it
                command = [sys.executable, "-m", "llpf_core", "sweep", "--out", str(out), "--quiet", *args]
                proc = subprocess.Popen(command, cwd=ENGINE_ROOT, stdout=subprocess.DEVNULL, stderr=stderr, text=True,
                                        start_new_session=True)
                interrupted = None  # when Stop last sent SIGINT
                while True:
                    try:
                        rc = proc.wait(POLL_S)
                        break
                    except subprocess.TimeoutExpired:
                        pass
                    if stop.is_set() and (interrupted is None or time.monotonic() - interrupted > REPEAT_STOP_S):
                        os.killpg(proc.pid, signal.SIGINT)
                        interrupted = time.monotonic()
                    self._follow(job, out)
                stderr.seek(0)
                lines = stderr.read().strip().splitlines()
            self._follow(job, out)
            self._set(job, **_outcome(rc, lines, out, interrupted is not None))

        return work

    def _follow(self, job: Job, out: Path) -> None:
        """The finished pairs, from sweep.json, as the job's progress."""
        try:
            pairs = read_sweep(out)["pairs"] if (out / "sweep.json").exists() else []
        except UserError:  # being rewritten, or damaged: the next look tells
            return
        done = sum(p["status"] == "finished" for p in pairs)
        if pairs:
            self._set(job, progress=Progress(done, len(pairs)),
                      message=f"{done} of {len(pairs)} pairs finished" if job.status == "running" else job.message)


def _check_workers(workers: int) -> None:
    if not 1 <= workers <= sweep_max_workers():
        raise UserError(f"a sweep from the dashboard has 1 to {sweep_max_workers()} workers on this server, got "
                        f"{workers}")


def _outcome(rc: int, stderr: list[str], out: Path, interrupted: bool) -> dict:
    """The job's last status, message and error from the sweep's exit code, its stderr and its folder."""
    try:
        status = read_sweep(out)["status"] if (out / "sweep.json").exists() else None
    except UserError:
        status = None
    if rc == 0:
        return {"status": "finished", "message": "every pair finished"}
    if interrupted:
        return {"status": "stopped", "message": "stopped; Resume finishes the interrupted pairs" if status else
                "stopped before it started; start it again"}
    if rc == 2 or status is None:  # refused its input (exit 2: one line per problem), or ended before starting
        said = (" ".join(stderr) if rc == 2 else stderr[-1]) if stderr else f"the sweep ended with exit code {rc}"
        return {"status": "failed", "error": said}
    return {"status": "failed", "error": "some pairs failed; see their errors below, and Resume runs them again"}
