"""Training jobs: one mode per seed, each ``train_mode`` in a child process of its own, its epochs in the
job's message. The engine trains a mode without checkpoints, so Stop terminates the process at once:
the mode being trained is not written (``save_mode`` writes it whole at the end), those before it stay."""
from __future__ import annotations

from multiprocessing.synchronize import Event
from pathlib import Path

import torch

from llpf_core import UserError, load_recipe, train_mode

from .child import WORK_THREADS, JobStopped, failures_reported, follow_child
from .supervisor import Job, Supervisor


class TrainingJobs(Supervisor):
    def start_training(self, name: str, model: str, dataset: str, seeds: list[int], recipe: str, modes_dir: Path, *,
                       device: str = "auto", data_root: Path | None = None, owner: str = "") -> Job:
        """Train one mode per seed, one after another, into ``modes_dir``."""
        if not seeds:
            raise UserError("give at least one seed")
        paths = [modes_dir / f"{model}-{dataset}-seed{s}.safetensors" for s in seeds]
        taken = [p.name for p in paths if p.exists()]
        if taken:
            raise UserError(f"mode files already exist: {', '.join(taken)}; choose other seeds or delete them")

        def work(job: Job, stop: Event, _pause: Event) -> None:
            for seed, path in zip(seeds, paths):
                self._train(job, model, dataset, seed, path, recipe, device, data_root, stop)
            self._set(job, status="finished", message=f"trained {len(seeds)} mode(s)")

        return self._launch(Job(name, "train", owner), work)

    def _train(self, job: Job, model: str, dataset: str, seed: int, path: Path, recipe: str, device: str,
               data_root: Path | None, stop: Event) -> None:
        """Train one mode in a child process; JobStopped (the mode unwritten) when ``stop`` is set meanwhile."""
        doing = f"training {model} on {dataset}, seed {seed}"
        self._set(job, status="training", message=f"{doing}: loading data")

        def on_epoch(epoch: int, epochs: int, loss: float) -> None:
            self._set(job, message=f"{doing}: epoch {epoch}/{epochs}, loss {loss:.4f}")

        try:
            follow_child(job.name, _train_process, (model, dataset, seed, path, recipe, device, data_root), on_epoch,
                         "train that seed again", kill_on=stop)
        except JobStopped:
            done = f"; kept {', '.join(p.name for p in job.modes)}" if job.modes else ""
            raise JobStopped(f"stopped while {doing} (not saved){done}") from None
        with self._lock:
            job.modes.append(path)


def _train_process(model, dataset, seed, path, recipe, device, data_root, events) -> None:
    """Body of a training child process: ``train_mode``, reporting epochs and the outcome to ``events``."""
    torch.set_num_threads(WORK_THREADS)
    with failures_reported(events):
        train_mode(model, dataset, seed, path, load_recipe(recipe), device, data_root,
                   lambda epoch, epochs, loss: events.put(("progress", epoch, epochs, loss)), recipe)
        events.put(("done",))
