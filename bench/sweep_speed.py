"""Does a sweep run pairs in parallel? N digits pairs on a local Ray with K workers against the same N
searches one after another in this process, as a ratio, plus the sweep's consistency figures.

    python bench/sweep_speed.py [--pairs 8] [--workers 2] [--set key=value ...] [--out FOLDER]

The modes are trained first (untimed). The sweep's time includes starting and stopping its local Ray (also printed without it);
both sides run torch with one thread. On a shared machine the ratio is low by whatever the other load takes.
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from llpf_core import load_recipe, run_search, train_mode  # noqa: E402
from llpf_core.sweep import pair_config, plan_sweep, run_sweep  # noqa: E402


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
    t0 = time.perf_counter()
    ray.init(num_cpus=a.workers, num_gpus=0, include_dashboard=False, object_store_memory=80 * 1024 * 1024,
             log_to_driver=False, logging_level="ERROR")  # the same local Ray the CLI's sweep starts
    started = time.perf_counter()
    result = run_sweep(root / "sweep", spec, workers=a.workers)
    searched = time.perf_counter()
    ray.shutdown()
    parallel, ray_start = time.perf_counter() - t0, started - t0
    t0 = time.perf_counter()
    for p in result.pairs:
        run_search(p["start"], p["end"], pair_config(spec, p["name"]), root / "one-by-one" / p["name"])
    serial = time.perf_counter() - t0
    summary = pd.read_csv(root / "sweep" / "summary.csv")
    print(f"{a.pairs} pairs: sweep with {a.workers} workers {parallel:.1f} s, one after another {serial:.1f} s, "
          f"speed-up {serial / parallel:.2f}x (target >= 1.6x with 2 workers on 2 idle cores)")
    print(f"of which starting Ray {ray_start:.1f} s; with Ray already running (a cluster) {searched - started:.1f} s, "
          f"speed-up {serial / (searched - started):.2f}x")
    for col in ("path_max_train_loss", "barrier"):
        v = summary[col].astype(float).tolist()
        print(f"{col}: mean {statistics.mean(v):.4g} +- {statistics.stdev(v) if len(v) > 1 else 0:.2g} "
              f"(std, {len(v)} pairs)")
    print(f"folder: {root}")


if __name__ == "__main__":
    main()
