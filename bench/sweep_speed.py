"""Does a sweep run pairs in parallel? N digits pairs on a local Ray with K workers against the same N
searches one after another in this process, as a ratio, plus where the sweep's seconds go and the
sweep's consistency figures.

    python bench/sweep_speed.py [--pairs 8] [--workers 2] [--set key=value ...] [--out FOLDER]

Two comparisons, side by side in one run:
- at the command line, what a user waits for: one `sweep --modes ...` command against the same searches as
  `connect` commands one after another, the way it is done by hand without sweeps (each command a new
  process with its imports, as each sweep worker has);
- in this process, the strictest: run_sweep against run_search in a loop in a warm process.
The modes are trained first (untimed, in this process, so the in-process serial side starts with torch and
torch.optim already imported). The sweep's time includes starting and stopping its local Ray; both
sides run torch with one thread. With N pairs of t seconds each on K workers and a fixed cost F (Ray's
start and stop, each worker's first imports), the ratio is N*t / (F + N/K*t): with 8 pairs on 2 workers it
reaches 1.6x only when t >= F. On a shared machine the ratio is low by whatever the other load takes.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from llpf_core import load_recipe, run_search, train_mode  # noqa: E402
from llpf_core.sweep import pair_config, plan_sweep, run_sweep  # noqa: E402


def ray_cpu_seconds() -> dict[str, float]:
    """CPU seconds used so far by this process's descendants: Ray's workers and Ray's own processes."""
    tick = os.sysconf("SC_CLK_TCK")
    procs = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        procs[int(pid)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick, cmd)
    mine, grew = {os.getpid()}, True
    while grew:
        kids = {p for p, (parent, _, _) in procs.items() if parent in mine} - mine
        mine |= kids
        grew = bool(kids)
    use = {"workers": 0.0, "ray": 0.0}
    for pid in mine - {os.getpid()}:
        _, cpu, cmd = procs[pid]
        use["workers" if cmd.startswith("ray::") and "Agent" not in cmd else "ray"] += cpu
    return use


def at_the_command_line(root: Path, pairs: list[dict], workers: int, overrides: list[str]) -> tuple[float, float]:
    """Seconds for one `sweep` command over the pairs' modes, and for a `connect` command per pair one after
    another; both with one torch thread per search."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    sets = [arg for o in overrides for arg in ("--set", o)]
    cli = [sys.executable, "-m", "llpf_core"]
    t0 = time.perf_counter()
    subprocess.run([*cli, "sweep", "--out", str(root / "cli-sweep"), "--modes",
                    *[str(p[k]) for p in pairs for k in ("start", "end")], "--workers", str(workers), *sets,
                    "--quiet"], check=True, env=env, stdout=subprocess.DEVNULL)
    sweep_s, t0 = time.perf_counter() - t0, time.perf_counter()
    for p in pairs:
        subprocess.run([*cli, "connect", str(p["start"]), str(p["end"]), "--out", str(root / "cli-connect" / p["name"]),
                        *sets, "--quiet"], check=True, env=env, stdout=subprocess.DEVNULL)
    return sweep_s, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", help="folder to keep (default: a temporary one)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    root = Path(a.out or tempfile.mkdtemp(prefix="sweep-speed-"))
    spec = plan_sweep("mlp", "digits", a.pairs, 1, overrides=a.set, recipe="mlp-digits")
    recipe = load_recipe("mlp-digits")
    for s in spec.seeds:  # the sweep reuses modes already in its modes/ folder
        train_mode("mlp", "digits", s, root / "sweep" / "modes" / f"seed{s}.safetensors", recipe, "cpu",
                   recipe_name="mlp-digits")
    import ray
    begun = time.perf_counter()
    ray.init(num_cpus=a.workers, num_gpus=0, include_dashboard=False, object_store_memory=80 * 1024 * 1024,
             log_to_driver=False, logging_level="ERROR")  # the same local Ray the CLI's sweep starts
    started, cpu0 = time.perf_counter(), time.process_time()
    result = run_sweep(root / "sweep", spec, workers=a.workers)
    searched, driver_cpu = time.perf_counter(), time.process_time() - cpu0
    cpu = ray_cpu_seconds()
    ray.shutdown()
    stopped = time.perf_counter()
    parallel = stopped - begun
    t0, serial_cpu0 = time.perf_counter(), time.process_time()
    alone = []
    for p in result.pairs:
        run = run_search(p["start"], p["end"], pair_config(spec, p["name"]), root / "one-by-one" / p["name"])
        alone.append(run.info["summary"]["wall_s"])
    serial, serial_cpu = time.perf_counter() - t0, time.process_time() - serial_cpu0
    cli_sweep, cli_serial = at_the_command_line(root, result.pairs, a.workers, a.set)
    summary = pd.read_csv(root / "sweep" / "summary.csv")
    swept = sorted(summary["wall_s"].astype(float))
    t = statistics.median(swept)
    searches = a.pairs / a.workers * t  # the ideal: every worker busy with warm searches throughout
    rest = (searched - started) - searches  # each worker's first imports, scheduling, sweep.json
    fixed = (started - begun) + (stopped - searched) + rest
    print(f"{a.pairs} pairs at the command line: one sweep command with {a.workers} workers {cli_sweep:.1f} s, "
          f"{a.pairs} connect commands one after another {cli_serial:.1f} s, speed-up {cli_serial / cli_sweep:.2f}x")
    print(f"{a.pairs} pairs in this process: sweep with {a.workers} workers {parallel:.1f} s, one after another "
          f"{serial:.1f} s, speed-up {serial / parallel:.2f}x (target >= 1.6x with 2 workers on 2 idle cores)")
    print(f"with Ray already running (a cluster) {searched - started:.1f} s, "
          f"speed-up {serial / (searched - started):.2f}x")
    print(f"the sweep's {parallel:.1f} s: starting Ray {started - begun:.1f}, stopping it {stopped - searched:.1f}, "
          f"{a.pairs} searches of median {t:.2f} s on {a.workers} workers {searches:.1f}, the rest {rest:.1f} "
          f"(each worker's first imports, scheduling)")
    print(f"one search alone: median {statistics.median(alone):.2f} s; in the sweep: "
          f"{', '.join(f'{w:.2f}' for w in swept)} s "
          "(a worker's first one imports torch._dynamo, which torch.optim needs)")
    gain = a.pairs - 1.6 * a.pairs / a.workers  # N t / (F + N/K t) >= 1.6  <=>  t >= 1.6 F / gain
    reach = (f"1.6x needs searches of t >= {1.6 * fixed / gain:.1f} s" if gain > 0
             else f"1.6x is out of reach with {a.workers} workers")
    print(f"fixed cost F = {fixed:.1f} s; the ratio is N t / (F + N/K t): {reach}")
    total_cpu = cpu["workers"] + cpu["ray"] + driver_cpu
    print(f"CPU seconds: the sweep {total_cpu:.1f} (workers {cpu['workers']:.1f}, "
          f"{cpu['workers'] - serial_cpu:.1f} more than the same searches use one after another "
          f"({serial_cpu:.1f}): each worker's start and imports; Ray's own processes {cpu['ray']:.1f}; "
          f"this driver {driver_cpu:.2f})")
    print(f"so even on {a.workers} idle cores the sweep needs >= {total_cpu / a.workers:.1f} s: "
          f"at best {serial_cpu / (total_cpu / a.workers):.2f}x (a bound that does not depend on the other load)")
    for col in ("path_max_train_loss", "barrier"):
        v = summary[col].astype(float).tolist()
        print(f"{col}: mean {statistics.mean(v):.4g} +- {statistics.stdev(v) if len(v) > 1 else 0:.2g} "
              f"(std, {len(v)} pairs)")
    print(f"folder: {root}")


if __name__ == "__main__":
    main()
