"""Training jobs: one mode per seed, one after another, in one child process, its epochs in the job's
message. The engine trains a mode without checkpoints, so Stop terminates the process at once: the
mode being trained is not written (``save_mode`` writes it whole at the end), those before it stay."""
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
        data_label = Path(dataset.partition(":")[2] or dataset).name  # folder:/.../imgs -> imgs: one file name
        paths = [modes_dir / f"{model}-{data_label}-seed{s}.safetensors" for s in seeds]
        taken = [p.name for p in paths if p.exists()]
        if taken:
            raise UserError(f"mode files already exist: {', '.join(taken)}; choose other seeds or delete them")

        def work(job: Job, stop: Event, _pause: Event) -> None:
            self._train(job, model, dataset, list(zip(seeds, paths)), recipe, device, data_root, stop)
            self._set(job, status="finished", message=f"trained {len(seeds)} mode(s)")

        return self._launch(Job(name, "train", owner), work)

    def _train(self, job: Job, model: str, dataset: str, seeds: list[tuple[int, Path]], recipe: str, device: str,
               data_root: Path | None, stop: Event) -> None:
        """Train a mode per (seed, path) in a child process; each one trained joins ``job.modes``. Raises
        JobStopped (the mode in training unwritten) when ``stop`` is set meanwhile."""
        doing = f"training {model} on {dataset}, seed {seeds[0][0]}"
        self._set(job, status="training", message=f"{doing}: loading data")

        def on_progress(what: str, seed: int, *epoch) -> None:
            nonlocal doing
            doing = f"training {model} on {dataset}, seed {seed}"
            if what == "saved":
                with self._lock:
                    job.modes.append(dict(seeds)[seed])
            elif what == "epoch":
                self._set(job, message=f"{doing}: epoch {epoch[0]}/{epoch[1]}, loss {epoch[2]:.4f}")
            else:
                self._set(job, message=f"{doing}: loading data")

        try:
            follow_child(job.name, _train_process, (model, dataset, seeds, recipe, device, data_root), on_progress,
                         "train the missing seeds again", kill_on=stop)
        except JobStopped:
            kept = f"; kept {', '.join(p.name for p in job.modes)}" if job.modes else ""
            raise JobStopped(f"stopped while {doing} (not saved){kept}") from None


def _train_process(model, dataset, seeds, recipe, device, data_root, events) -> None:
    """Body of a training child process: ``train_mode`` per seed, reporting ("progress", "loading" |
    "epoch" | "saved", seed, ...) events and the outcome to ``events``."""
    torch.set_num_threads(WORK_THREADS)
    with failures_reported(events):
        for seed, path in seeds:
            events.put(("progress", "loading", seed))
            train_mode(model, dataset, seed, path, load_recipe(recipe), device, data_root,
                       lambda epoch, epochs, loss, s=seed: events.put(("progress", "epoch", s, epoch, epochs, loss)),
                       recipe)
            events.put(("progress", "saved", seed))
        events.put(("done",))
