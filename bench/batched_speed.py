"""Batched LLPF against the same pairs one after another: pairs per second, and a whole batched sweep.

    python bench/batched_speed.py [--ticks N] [--ks 1,8,32] [--modes 16] [--epochs E] [--device cpu|cuda]
                                  [--threads 1] [--lenet-ticks 20] [--skip-lenet] [--skip-mlp] [--skip-sweep]
                                  [--training-only] [--out FOLDER] [--json FILE]

Side by side in one run, so the ratios are fair on a shared machine (the load is printed):
- the training alone (the issue's measurement): K digits MLPs, 400 SGD steps each, stacked
  (``StackedTrainer``, with the MLP's own stacked forward and with the generic ``torch.func`` path)
  against ``train_until`` one model after another;
- the engine, in this process: K pairs by ``run_batched`` against the same K pairs by ``run_search`` in a
  loop, for each K of ``--ks`` on the digits MLP (its preset; ``--ticks`` ticks, default the preset's 300)
  and K = 1, 8 on LeNet-5 (Fashion-MNIST, its preset, ``--lenet-ticks`` ticks; modes from a one-epoch
  recipe). Whole runs: set-up, evaluation, continuity checks, points and checkpoints included. Wall
  seconds and this process's CPU seconds (the CPU figure depends less on the other load);
- at the command line: one ``sweep --modes (8 pairs) --workers 1 --batch 8`` command, process start
  included, against the eight searches' own wall times (run.json's, each searched alone) added up, and
  against eight ``connect`` commands (process start included).
The modes are trained first, untimed. ``--json`` is rewritten after every row, so a run cut short keeps
what it measured (the GPU check's ``batched`` part).
"""
import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from llpf_core import TrainRecipe, load_recipe, resolve_config, run_search, train_mode  # noqa: E402
from llpf_core.batched import Pair, run_batched  # noqa: E402


class Rows(list):
    """The measured rows, printed and written to ``--json`` (atomically) as they come."""

    def __init__(self, path: Path | None):
        super().__init__()
        self.path = path

    def add(self, row: dict) -> None:
        self.append(row)
        if self.path:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(self, indent=1))
            os.replace(tmp, self.path)


def modes(root: Path, model: str, dataset: str, n: int, recipe: TrainRecipe, name: str,
          device: str = "cpu") -> list[Path]:
    paths = []
    for seed in range(1, n + 1):
        path = root / f"{model}-seed{seed}.safetensors"
        if not path.exists():
            train_mode(model, dataset, seed, path, recipe, device, recipe_name=name)
        paths.append(path)
    return paths


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn) -> tuple[float, float]:
    sync()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    sync()
    return time.perf_counter() - wall, time.process_time() - cpu


def compare(root: Path, label: str, paths: list[Path], cfg, k: int) -> dict:
    """K pairs one after another, then the same K batched; pairs are ordered pairs of distinct modes."""
    pairs = [(a, b) for a in paths for b in paths if a != b][:k]
    if len(pairs) < k:
        raise SystemExit(f"error: {len(paths)} modes make {len(pairs)} pairs, fewer than K={k}; raise --modes")
    serial_dir, batch_dir = root / f"{label}-{k}-serial", root / f"{label}-{k}-batched"
    serial = timed(lambda: [run_search(a, b, cfg, serial_dir / f"p{i}") for i, (a, b) in enumerate(pairs)])
    results: list = []
    batched = timed(lambda: results.extend(run_batched([Pair(a, b, cfg, batch_dir / f"p{i}")
                                                        for i, (a, b) in enumerate(pairs)])))
    bad = [r for r in results if isinstance(r, Exception) or r.status != "finished"]
    assert not bad, bad
    print(f"{label}, K={k}: one after another {serial[0]:.1f} s wall ({serial[1]:.1f} s CPU), batched "
          f"{batched[0]:.1f} s ({batched[1]:.1f} s)", flush=True)
    return {"case": f"{label}, K={k}", "serial_wall": serial[0], "batched_wall": batched[0],
            "serial_cpu": serial[1], "batched_cpu": batched[1]}


def training_only(paths: list[Path], k: int, steps: int, device: str = "cpu") -> dict:
    """The issue's measurement: K digits MLPs trained ``steps`` SGD steps each (batch 32, the loss read every
    step as the stop rule does), one after another by ``train_until`` against stacked by ``StackedTrainer``:
    with the MLP's own stacked forward, and with the generic ``torch.func`` one."""
    from llpf_core import build_model, load_dataset, load_mode
    from llpf_core.config import TrainSpec
    from llpf_core.stacked import Job, StackedTrainer, stack_models
    from llpf_core.train import BatchStream, PlainSGD, train_until
    data = load_dataset("digits", "train").to(device)
    spec = TrainSpec(lr=0.05, batch_size=32, loss_threshold=0.0, min_iters=steps, max_iters=steps)
    mode = load_mode(paths[0], "mode")

    def models():
        out = []
        for i in range(k):
            m = build_model("mlp", **mode.meta.model_kwargs)
            m.load_state_dict(load_mode(paths[i % len(paths)], "mode").model.state_dict())
            out.append(m.to(device))
        return out

    def stream(i):
        return BatchStream(data, 32, torch.Generator(device).manual_seed(i))

    def stacked(generic: bool):
        ms = models()
        base = copy.deepcopy(ms[0])
        if generic:  # a subclass without its own forward_stacked takes the torch.func path
            base.__class__ = type("MLPWithoutStackedForward", (type(base),), {})
        trainer = StackedTrainer(base, stack_models(ms))
        return timed(lambda: trainer.train({i: Job(stream(i), spec) for i in range(k)}))
    ones = models()
    serial = timed(lambda: [train_until(m, PlainSGD(list(m.parameters()), lr=spec.lr), stream(i), spec)
                            for i, m in enumerate(ones)])
    own, generic = stacked(False), stacked(True)
    print(f"training only, digits MLP, K={k}, {steps} steps each: one after another {serial[0]:.2f} s wall "
          f"({serial[1]:.2f} s CPU), stacked {own[0]:.2f} s ({own[1]:.2f} s): {serial[0] / own[0]:.2f}x wall "
          f"({serial[1] / own[1]:.2f}x CPU); generic torch.func stacking {generic[0]:.2f} s "
          f"({serial[0] / generic[0]:.2f}x)", flush=True)
    return {"case": f"training only, digits MLP, K={k}", "serial_wall": serial[0], "batched_wall": own[0],
            "serial_cpu": serial[1], "batched_cpu": own[1], "generic_wall": generic[0], "generic_cpu": generic[1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ticks", type=int, default=0, help="ticks of the digits runs (default 0: the preset's 300)")
    ap.add_argument("--ks", default="1,8,32", help="the batch sizes K of the digits cases (default 1,8,32)")
    ap.add_argument("--modes", type=int, default=16, help="digits modes to pair (K pairs of distinct modes)")
    ap.add_argument("--epochs", type=int, help="the digits modes' epochs (default: the recipe's)")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda for the GPU check's case")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lenet-ticks", type=int, default=20)
    ap.add_argument("--skip-lenet", action="store_true")
    ap.add_argument("--skip-mlp", action="store_true", help="only the LeNet-5 cases")
    ap.add_argument("--skip-sweep", action="store_true", help="no sweep command (it needs 16 modes)")
    ap.add_argument("--training-only", action="store_true", help="only the issue's training measurement")
    ap.add_argument("--out", help="folder for modes and runs (default: a temporary one)")
    ap.add_argument("--json", type=Path, help="also write the rows here, after each one")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    root = Path(a.out or tempfile.mkdtemp(prefix="batched-speed-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"load average before: {os.getloadavg()}, {os.cpu_count()} CPUs, {a.threads} torch thread(s), "
          f"device {a.device}", flush=True)
    recipe = load_recipe("mlp-digits")
    mlp = modes(root / "modes", "mlp", "digits", a.modes, replace(recipe, epochs=a.epochs or recipe.epochs),
                "mlp-digits", a.device)
    mlp_cfg = replace(resolve_config("mlp", "digits", "m2m", overrides=[f"ticks={a.ticks}"] if a.ticks else []).config,
                      device=a.device)
    # Warm-up, untimed: the first search in a process pays one-time costs (imports, CUDA kernels).
    run_search(mlp[0], mlp[1], replace(mlp_cfg, ticks=2), root / "warm-up" / "alone")
    run_batched([Pair(mlp[0], mlp[1], replace(mlp_cfg, ticks=2), root / "warm-up" / f"p{i}") for i in range(2)])
    rows = Rows(a.json)
    if not a.skip_mlp:
        mlp_cases(a, root, mlp, mlp_cfg, rows)
    if not a.skip_lenet:
        lenet = modes(root / "modes", "lenet5", "fashion-mnist", 4, replace(load_recipe("lenet5-fashion-mnist"),
                      epochs=1), "lenet5-fashion-mnist", a.device)
        lenet_cfg = replace(resolve_config("lenet5", "fashion-mnist", "m2m",
                                           overrides=[f"ticks={a.lenet_ticks}"]).config, device=a.device)
        for k in (1, 8):
            rows.add(compare(root, "LeNet-5", lenet, lenet_cfg, k))
    table(rows)


def mlp_cases(a, root: Path, mlp: list[Path], mlp_cfg, rows: Rows) -> None:
    ks = [int(k) for k in a.ks.split(",")]
    training_only(mlp, 2, 50, a.device)  # warm-up: the first SGD step and the first stacked step pay one-time costs
    for k in ks:
        rows.add(training_only(mlp, k, 400, a.device))
    if a.training_only:
        return
    for k in ks:
        rows.add(compare(root, "digits MLP", mlp, mlp_cfg, k))
    if not a.skip_sweep:
        rows.add(sweep_command(a, root, mlp, mlp_cfg))


def sweep_command(a, root: Path, mlp: list[Path], mlp_cfg) -> dict:
    """A whole sweep command of 8 digits pairs (disjoint mode pairs), against the same eight searched alone:
    their own wall times (run.json's: set-up and process start not included), and eight `connect` commands."""
    if len(mlp) < 16:
        raise SystemExit("error: the sweep command needs --modes 16 (8 disjoint pairs); or pass --skip-sweep")
    sweep_modes = [str(p) for p in mlp[:16]]
    own = 0.0
    for i in range(8):  # the same pairs as the sweep's: (mode 2i+1, mode 2i+2)
        run = run_search(sweep_modes[2 * i], sweep_modes[2 * i + 1], mlp_cfg, root / "sweep-alone" / f"p{i}")
        own += float(run.metrics["wall_s"].iloc[-1])
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
    settings = ["--set", f"device={a.device}", *(["--set", f"ticks={a.ticks}"] if a.ticks else [])]
    commands = 0.0
    for i in range(8):
        cmd = [sys.executable, "-m", "llpf_core", "connect", sweep_modes[2 * i], sweep_modes[2 * i + 1], "--out",
               str(root / "connect" / f"p{i}"), "--quiet", *settings]
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env=env)
        commands += time.perf_counter() - t
    cmd = [sys.executable, "-m", "llpf_core", "sweep", "--out", str(root / "sweep"), "--modes", *sweep_modes,
           "--workers", "1", "--batch", "8", "--threads", str(a.threads), "--quiet", *settings]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    sweep_wall = time.perf_counter() - t
    print(f"\nsweep --pairs 8 --workers 1 --batch 8 (digits MLP, {a.ticks or 300} ticks): {sweep_wall:.1f} s, "
          f"process start included; the eight searches' own wall times added up: {own:.1f} s (ratio "
          f"{sweep_wall / own:.2f}, target <= 0.4); eight `connect` commands: {commands:.1f} s (ratio "
          f"{sweep_wall / commands:.2f})", flush=True)
    return {"case": "sweep command against 8 connect commands, K=8", "serial_wall": commands,
            "batched_wall": sweep_wall, "serial_cpu": None, "batched_cpu": None, "own_wall_sum": own}


def table(rows: list[dict]) -> None:
    print(f"\nload average after: {os.getloadavg()}")
    print("| case | one after another: wall s (CPU s) | batched: wall s (CPU s) | pairs/s one by one | pairs/s batched "
          "| speed-up wall (CPU) |")
    print("|---|---|---|---|---|---|")

    def cpu(value) -> str:
        return "" if value is None else f" ({value:.1f})"
    for r in rows:
        k = int(r["case"].rsplit("=", 1)[1])
        ratio = "" if r["serial_cpu"] is None else f" ({r['serial_cpu'] / r['batched_cpu']:.2f}x)"
        print(f"| {r['case']} | {r['serial_wall']:.1f}{cpu(r['serial_cpu'])} | {r['batched_wall']:.1f}"
              f"{cpu(r['batched_cpu'])} | {k / r['serial_wall']:.2f} | {k / r['batched_wall']:.2f} | "
              f"{r['serial_wall'] / r['batched_wall']:.2f}x{ratio} |")


if __name__ == "__main__":
    main()
