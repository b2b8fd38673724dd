"""Sweeps: one or more path methods on many independently trained pairs, one Ray task per batch of runs.

A sweep folder holds ``modes/`` (seed<S>.safetensors), ``runs/<run>/`` (ordinary run folders: ``<pair>``
for a sweep of one method, ``<pair>-<method>`` for several), ``sweep.json`` (the sweep and each run's
status) and ``summary.csv`` (one row per pair and method), both rewritten atomically whenever a run
changes state. Ray is imported only inside the functions here:
``import llpf_core`` and the dashboard never load it. torch is too: the storage check's task on every node
then costs a worker no ``import torch`` (1.2 s, which delayed every pair on a 2-core machine).

Without an address the sweep starts an embedded local Ray for its own lifetime; with one it joins that
cluster, where the sweep folder must be on storage every node reaches (checked before any work).
"""
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import UserError
from .sweepfolder import SweepFolder, SweepSpec, algorithms_of, read_sweep, spec_of, spec_pairs

TASK_RETRIES = 3  # a worker or node that dies: Ray reruns the pair's task, which resumes from its checkpoint


def plan_sweep(model: str | None, dataset: str, pairs: int | None, seed: int = 1, *,
               preset: str | None = None, algorithm: str | None = None, overrides: list[str] | None = None,
               recipe: str | None = None, modes: list[str] | None = None,
               pair_overrides: dict[str, list[str]] | None = None) -> SweepSpec:
    """Check a sweep's inputs and resolve its preset, without training or running anything."""
    from . import load_mode
    if modes:
        if len(modes) < 2 or len(modes) % 2:
            raise UserError(f"--modes needs an even number of mode files (2 or more), got {len(modes)}")
        first = load_mode(modes[0], "mode file")
        model, dataset = first.meta.model, first.meta.dataset
        seeds = [load_mode(m, "mode file").meta.seed for m in modes]
    else:
        if pairs is None or pairs < 1:
            raise UserError(f"--pairs must be at least 1, got {pairs}")
        if not model:
            raise UserError("a sweep needs --model (or --modes FILE...)")
        from .registry import require_model
        require_model(model)  # a typo is named before it is taken for a model without a preset
        seeds = list(range(seed, seed + 2 * pairs))
    methods = [a.strip() for a in (algorithm or "m2m").split(",") if a.strip()]
    if not methods or len(set(methods)) != len(methods):
        raise UserError(f"--algorithm {algorithm!r}: name each method once, comma-separated, e.g. linear,rebasin,m2m")
    spec = SweepSpec(model, dataset, seeds, preset or "", ",".join(methods), overrides=list(overrides or []),
                     recipe=recipe or "", modes=[str(m) for m in modes or []],
                     pair_overrides=dict(pair_overrides or {}))
    names = {n for n, _, _ in spec_pairs(spec)}
    unknown = sorted(set(spec.pair_overrides) - names)
    if unknown:
        raise UserError(f"--pair-set names {unknown[0]!r}, which is not a pair of this sweep "
                        f"({', '.join(sorted(names))})")
    for name, _, _ in spec_pairs(spec):
        for method in methods:
            pair_config(spec, name, method)  # a bad method, --set or --pair-set fails here, before any work
    return spec


def pair_config(spec: SweepSpec, pair: str, algorithm: str | None = None):
    """The SearchConfig of one pair and method (default: the sweep's only one), from the one resolver:
    the preset, the method, --set, then that pair's own overrides."""
    from . import SearchConfig, get_method, resolve_config
    methods = algorithms_of(spec)
    if algorithm is None and len(methods) > 1:
        raise ValueError(f"the sweep runs {spec.algorithm}: name the method")
    algorithm = algorithm or methods[0]
    # --set keys under another swept plugin method's own prefix (polychain.steps) are that method's only.
    others = {get_method(m).prefix for m in methods if m != algorithm} - {get_method(algorithm).prefix} - \
        set(SearchConfig.__dataclass_fields__)
    overrides = [o for o in [*spec.overrides, *spec.pair_overrides.get(pair, [])]
                 if o.partition("=")[0].split(".")[0] not in others]
    return resolve_config(spec.model, spec.dataset, algorithm, preset=spec.preset or None, overrides=overrides).config


# --- Ray tasks (module-level functions: Ray ships them to the workers by reference) ------------------

def _train_task(model: str, dataset: str, seed: int, path: str, recipe: str, threads: int) -> str:
    import torch

    from .train import TrainRecipe, load_recipe, train_mode
    torch.set_num_threads(threads)
    train_mode(model, dataset, seed, path, load_recipe(recipe) if recipe else TrainRecipe(), "auto",
               recipe_name=recipe)
    return path


def _batch_task(jobs: list[tuple[str, str, dict, str]], threads: int, plugins: list[str]) -> list[dict]:
    """Run (or resume) a batch of pairs' searches (start, end, config, run folder), batched
    where they can be (batched.py); failures are returned, not raised (Ray retries only dead workers).
    ``plugins``: the plugin files the sweep loaded (a plugin method runs in the worker too)."""
    import torch

    from . import SearchConfig, run_summary
    from .batched import Pair, run_batched
    from .plugins import load_plugins
    torch.set_num_threads(threads)
    try:
        load_plugins(plugins)
    except Exception as e:  # noqa: BLE001
        return [_failure(e)] * len(jobs)
    runs = run_batched([Pair(a, b, SearchConfig.from_dict(cfg), folder) for a, b, cfg, folder in jobs])
    return [_failure(r) if isinstance(r, Exception) else {"status": r.status, "error": r.error,
                                                           "summary": run_summary(r)} for r in runs]


def _failure(e: Exception) -> dict:
    return {"status": "failed", "error": str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"}


def _sees_folder(path: str, token: str) -> bool:
    try:
        return (Path(path) / ".sweep-token").read_text() == token
    except OSError:
        return False


# --- the driver -----------------------------------------------------------------------------------

@dataclass
class SweepResult:
    out: Path
    pairs: list[dict]

    @property
    def exit_code(self) -> int:
        return 0 if all(p["status"] == "finished" for p in self.pairs) else 1


def run_sweep(out: str | Path, spec: SweepSpec | None = None, *, resume: bool = False, workers: int | None = None,
              ray_address: str | None = None, cpus_per_path: float = 1, gpus_per_path: float = 0,
              threads: int = 1, on_event: Callable[[str], None] | None = None,
              batch: int | None = None) -> SweepResult:
    """Train the sweep's modes, run every unfinished pair, and return the pairs' outcomes.

    Pairs run in batches of ``batch`` LLPF searches advanced together (batched.py; default:
    ``default_batch``), one Ray task per batch. Uses the Ray this process has already initialised
    (``ray.init`` by the caller) if there is one; otherwise joins ``ray_address``, or starts a local Ray
    with ``workers`` CPUs for the sweep's lifetime; with ``workers=1`` and no cluster, the sweep runs
    in this process without Ray. ``spec`` may be None with ``resume=True``: the sweep in ``out``
    continues as stored.
    """
    out = Path(out)
    say = on_event or (lambda message: None)
    stored = read_sweep(out) if (out / "sweep.json").exists() else None
    if stored is None and spec is None:
        raise UserError(f"--resume: {out} holds no sweep yet; start it with --model/--pairs (or --modes)")
    if stored is not None:
        if spec is not None and spec_of(stored) != spec:
            s = spec_of(stored)
            raise UserError(f"{out} holds a different sweep ({s.model}/{s.dataset}, {len(s.seeds) // 2} pairs, seeds "
                            f"{s.seeds[0]}..{s.seeds[-1]}, preset {s.preset}); choose another --out or "
                            f"continue it with --resume --out {out}")
        if not resume:
            raise UserError(f"{out} already holds this sweep; pass --resume to finish it or choose another --out")
        spec = spec_of(stored)
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    if batch is not None and batch < 1:
        raise UserError(f"--batch must be at least 1, got {batch}")
    if cpus_per_path < 0 or gpus_per_path < 0 or (cpus_per_path == 0 and gpus_per_path == 0):
        raise UserError("--cpus-per-path and --gpus-per-path must be >= 0 and not both 0")
    mode_paths = _check_modes(out, spec)
    folder = SweepFolder(out, spec, stored)
    here = workers == 1 and ray_address is None and not _ray_running()
    ray, owned = (None, False) if here else _ray(ray_address, workers, gpus_per_path)
    try:
        if not here and (ray_address is not None or not owned):
            _check_storage(ray, out)  # a refusal writes nothing
        try:
            folder.set(status="running")
            _train_missing(ray, spec, mode_paths, cpus_per_path, gpus_per_path, threads, say)
            size = batch or default_batch(mode_paths[spec.seeds[0]], gpus_per_path > 0)
            _run_pairs(ray, spec, folder, mode_paths, workers, cpus_per_path, gpus_per_path, threads, say, size)
            folder.set(status="finished" if all(p["status"] == "finished" for p in folder.info["pairs"]) else "failed")
        except BaseException:
            for p in folder.info["pairs"]:
                if p["status"] == "running":
                    p["status"] = "interrupted"
            folder.set(status="interrupted")
            raise
    finally:
        if owned:
            ray.shutdown()
    return SweepResult(out, folder.info["pairs"])


def _check_modes(out: Path, spec: SweepSpec) -> dict[int, Path]:
    """Each seed's mode file; a file already in modes/ must be of the sweep's model and dataset."""
    from . import load_mode
    if spec.modes:
        return {s: Path(m) for s, m in zip(spec.seeds, spec.modes)}
    paths = {s: out / "modes" / f"seed{s}.safetensors" for s in spec.seeds}
    for s, path in paths.items():
        if path.exists():
            meta = load_mode(path, "mode file").meta
            if (meta.model, meta.dataset, meta.seed) != (spec.model, spec.dataset, s):
                raise UserError(f"{path} is a {meta.model}/{meta.dataset} mode of seed {meta.seed}, not "
                                f"{spec.model}/{spec.dataset} seed {s}; choose other --seed values or another --out")
    return paths


def _ray_running() -> bool:
    import sys
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


def default_batch(mode: Path, gpu: bool) -> int:
    """How many pairs of this mode's model one batch advances together: 32 for small models (their searches
    are bound by the per-operation cost that batching shares: up to 20,000 parameters on a CPU, 2 M on a
    GPU; whole digits runs gain more at 32 than at 8: about 2.4x against 1.9x, docs/batched.md), one for bigger
    ones and for models that cannot be stacked (BatchNorm)."""
    from . import load_mode
    from .stacked import why_not_stackable
    model = load_mode(mode, "mode file").model
    if why_not_stackable(model):
        return 1
    params = sum(p.numel() for p in model.parameters())  # bench/batched_speed.py: LeNet-5 (62k) gains nothing on a CPU
    return 32 if params <= (2_000_000 if gpu else 20_000) else 1


def _ray(address: str | None, workers: int | None, gpus_per_path: float):
    """(ray, owned): the Ray already running in this process, the cluster at ``address``, or a local one."""
    import ray
    if ray.is_initialized():
        return ray, False
    if address is not None:
        if address != "auto":
            host, _, port = address.rpartition(":")
            try:
                socket.create_connection((host, int(port)), timeout=5).close()
            except (OSError, ValueError) as e:
                raise UserError(f"cannot reach the Ray cluster at {address} ({e}); start it with `ray start --head` "
                                f"or pass the head's host:port (or --ray-address auto on a node of it)") from None
        try:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise UserError(f"cannot join the Ray cluster at {address}: {str(e).splitlines()[0]}") from None
        return ray, True
    workers = workers or os.cpu_count() or 1
    ray.init(num_cpus=workers, num_gpus=None if gpus_per_path else 0, include_dashboard=False,
             object_store_memory=80 * 1024 * 1024, log_to_driver=False, logging_level="ERROR",
             configure_logging=False)
    return ray, True


def _check_storage(ray, out: Path) -> None:
    """Every alive node must see the sweep folder (shared storage): refuse otherwise, before any work."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from .safefile import write_atomic
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    write_atomic(out / ".sweep-token", token.encode())
    task = ray.remote(num_cpus=0)(_sees_folder)
    nodes = [n for n in ray.nodes() if n["Alive"]]
    seen = ray.get([task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                    .remote(str(out.resolve()), token) for n in nodes])
    blind = [f"{n['NodeManagerAddress']} (node {n['NodeID'][:8]})" for n, ok in zip(nodes, seen) if not ok]
    if blind:  # refused: leave the folder as it was
        (out / ".sweep-token").unlink()
        if created:
            out.rmdir()
        raise UserError(f"the Ray node(s) {', '.join(blind)} cannot see {out.resolve()}; put the sweep folder on "
                        f"storage every node mounts at the same path (NFS or similar)")


def _options(cpus: float, gpus: float) -> dict:
    return {"num_cpus": cpus, "num_gpus": gpus, "max_retries": TASK_RETRIES}


def _train_missing(ray, spec, mode_paths, cpus, gpus, threads, say) -> None:
    missing = [(s, p) for s, p in mode_paths.items() if not p.exists()]
    if not missing:
        return
    say(f"training {len(missing)} mode(s)")
    args = [(spec.model, spec.dataset, s, str(p), spec.recipe, threads) for s, p in missing]
    if ray is None:
        for a in args:
            _train_task(*a)
        return
    task = ray.remote(_train_task).options(**_options(cpus, gpus))
    ray.get([task.remote(*a) for a in args])


LOCKSTEP = ("m2m", "m2o", "to_vs", "cross_sphere")  # the methods batched.py batches


def _batches(todo: list[dict], spec: SweepSpec, size: int, workers: int | None) -> list[list[dict]]:
    """The unfinished runs in batches: LLPF searches of one method ``size`` at a time (fewer when that
    leaves a worker idle), any other method one by one."""
    groups: dict[str, list[dict]] = {}
    for p in todo:
        groups.setdefault(p.get("algorithm", spec.algorithm), []).append(p)
    out = []
    for method, runs in groups.items():
        n = size if method in LOCKSTEP else 1
        if workers and workers > 1:
            n = max(1, min(n, -(-len(runs) // workers)))
        out += [runs[i:i + n] for i in range(0, len(runs), n)]
    return out


def _run_pairs(ray, spec, folder, mode_paths, workers, cpus, gpus, threads, say, size) -> None:
    todo = [p for p in folder.info["pairs"] if p["status"] != "finished"]
    from .plugins import loaded_plugins
    plugins = loaded_plugins()

    def start(batch: list[dict]) -> list[tuple]:
        jobs = []
        for p in batch:
            a, b = mode_paths[p["start_seed"]], mode_paths[p["end_seed"]]
            cfg = pair_config(spec, p.get("pair", p["name"]), p.get("algorithm", spec.algorithm))
            jobs.append((str(a), str(b), cfg.to_dict(), str(folder.out / p["run"])))
            folder.set(p["name"], status="running", error=None, start=str(a), end=str(b))
        return jobs

    def record(batch: list[dict], results: list[dict]) -> None:
        for p, result in zip(batch, results):
            folder.set(p["name"], **result, finished_at=time.time())
            say(f"{p['name']}: {result['status']}" + (f" ({result['error']})" if result.get("error") else ""))

    batches = _batches(todo, spec, size, workers)
    if ray is None:  # one worker on this machine: in this process
        for batch in batches:
            record(batch, _batch_task(start(batch), threads, plugins))
        return
    task = ray.remote(_batch_task).options(**_options(cpus, gpus))
    running: dict = {}
    limit = workers or len(batches)
    while batches or running:
        while batches and len(running) < limit:
            batch = batches.pop(0)
            running[task.remote(start(batch), threads, plugins)] = batch
        done, _ = ray.wait(list(running), num_returns=1)
        batch = running.pop(done[0])
        try:
            results = ray.get(done[0])
        except ray.exceptions.RayError as e:  # the task died more often than it may be retried
            results = [{"status": "failed", "error": f"{type(e).__name__}: {str(e).splitlines()[0]}"}] * len(batch)
        record(batch, results)
