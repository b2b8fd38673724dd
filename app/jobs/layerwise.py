"""Layer-wise connectivity jobs: ``compute_layerwise`` in a child process, the states evaluated as the
job's progress, Stop through the engine's event (a stopped analysis saves nothing)."""
from __future__ import annotations

from multiprocessing.synchronize import Event
from pathlib import Path

import torch

from llpf_core import compute_layerwise, load_run

from .child import WORK_THREADS, failures_reported, follow_child
from .supervisor import Job, Progress, Supervisor


class LayerwiseJobs(Supervisor):
    def start_layerwise(self, name: str, start: Path | None, end: Path | None, out_dir: Path,
                        run_dir: Path | None = None, *, owner: str = "") -> Job:
        """Compute the layer-wise connectivity of two mode files (or, with ``run_dir``, of that run's
        endpoints with its evaluation settings) into ``out_dir`` in the background. The job is
        ``layerwise-<name>``."""
        def work(job: Job, stop: Event, _pause: Event) -> None:
            self._set(job, status="running", message="loading the modes and data")

            def on_progress(done: int, total: int) -> None:
                self._set(job, progress=Progress(done, total), message=f"layer-wise: {done} of {total} states")

            done, total = follow_child(job.name, _layerwise_process, (start, end, out_dir, run_dir, stop),
                                       on_progress, "compute it again")
            self._set(job, status="finished" if done == total else "stopped",
                      message=f"{done} of {total} states evaluated" + ("" if done == total else "; nothing saved"))

        return self._launch(Job(f"layerwise-{name}", "layerwise", owner, run_dir=out_dir), work)


def _layerwise_process(start, end, out_dir, run_dir, stop, events) -> None:
    """Body of a layer-wise job's child process: ``compute_layerwise`` (on the GPU when there is one)."""
    torch.set_num_threads(WORK_THREADS)
    with failures_reported(events):
        seen = [0, 0]

        def on_progress(done: int, total: int) -> None:
            seen[:] = done, total
            events.put(("progress", done, total))

        source = (load_run(run_dir), None) if run_dir else (start, end)
        compute_layerwise(*source, out_dir, device="auto", stop_event=stop, on_progress=on_progress)
        events.put(("done", *seen))
