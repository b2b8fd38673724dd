"""Wall time of `python -m llpf_core demo`, with a breakdown.

    python bench/demo_time.py [--repeat 3] [--device cpu]

Runs the demo command as a user does (a fresh interpreter, import included) ``--repeat`` times and prints
each wall time and the median. Then one more run through a small driver that times the same work in
parts: interpreter start, importing llpf_core (torch, torchvision), training the two
modes, the search (with its set-up: data, tick 0 and the straight-line baseline) and the rest (checks
and the printed summary).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

DRIVER = r"""
import json, sys, time
t0 = time.perf_counter()
import llpf_core.cli as cli
import llpf_core.commands as commands
import llpf_core.connect as connect
import llpf_core.driver as driver
parts = {"import llpf_core and the commands (torch)": time.perf_counter() - t0}

def timed(label, fn):
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            parts[label] = parts.get(label, 0.0) + time.perf_counter() - t
    return wrapper

commands.train_mode = timed("train two modes", commands.train_mode)
commands.run_search = timed("search (300 ticks)", commands.run_search)
driver.Driver.__init__ = timed("  of which set-up (data, models)", driver.Driver.__init__)
connect.LLPF.begin = timed("  of which tick 0 and the baseline", connect.LLPF.begin)
driver.Driver._baseline = timed("  of which tick 0 and the baseline", driver.Driver._baseline)
t = time.perf_counter()
cli.main(sys.argv[1:])
parts["demo command in all"] = time.perf_counter() - t
print("PARTS " + json.dumps(parts))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryDirectory() as tmp:
        walls = []
        for i in range(args.repeat):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "llpf_core", "demo", "--out", f"{tmp}/demo{i}", "--quiet",
                            "--device", args.device], cwd=REPO, env=env, check=True, capture_output=True)
            walls.append(time.perf_counter() - t0)
            print(f"run {i + 1}: python -m llpf_core demo took {walls[-1]:.1f} s", flush=True)
        print(f"median of {args.repeat}: {statistics.median(walls):.1f} s (target: at most 30 s on 2 CPU cores)")

        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        start = time.perf_counter() - t0
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", DRIVER, "demo", "--out", f"{tmp}/parts", "--quiet",
                               "--device", args.device], cwd=REPO, env=env, check=True, capture_output=True,
                              text=True)
        wall = time.perf_counter() - t0
    parts = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("PARTS "))[6:])
    rest = parts.pop("demo command in all") - parts["train two modes"] - parts["search (300 ticks)"]
    print(f"\nbreakdown of one more run ({wall:.1f} s):")
    print(f"  {'interpreter start':<36} {start:6.2f} s")
    for label, secs in parts.items():
        print(f"  {label:<36} {secs:6.2f} s")
    print(f"  {'checks and summary':<36} {rest:6.2f} s")


if __name__ == "__main__":
    main()
