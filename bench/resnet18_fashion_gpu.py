"""ResNet-18 on Fashion-MNIST (padded to 32x32x3): train two modes, connect them, report the numbers.

The prepared GPU check of the model-zoo issue; it runs on a CPU too, slowly:

    python bench/resnet18_fashion_gpu.py --device cuda --epochs 3 --minutes 6 --out /tmp/r18

A small dry run on a CPU: --model cnn --dataset digits --recipe cnn-digits --preset cnn-digits-m2m.
It trains two modes (seeds 1 and 2), then runs the paper-structured M2M preset until it finishes or the
time budget is spent (the run stops with a checkpoint, so `connect ... --resume` can continue it), and
prints the training steps/s, the straight-line barrier and the path's maximum train loss.

Fashion-MNIST is read from ``--data-root`` (default ``$LLPF_HOME/data``) in torchvision's layout
(``FashionMNIST/raw/*-ubyte``), or from the Debian package. The four ``*-ubyte.gz`` files (as the Debian
package and the dataset's site ship them) are unpacked there first when they lie in the data root itself
or in ``FashionMNIST/raw``: a machine without the package needs only those 30 MB copied into the data root.

Modes already in ``--out`` (from an earlier try with the same model and dataset) are reused, and each try
writes a fresh run folder (``run-YYYYmmdd-HHMMSS``), so a second try does not retrain or collide.
``--ticks N`` compresses the preset's phases into N ticks, for a short run with the paper's structure.
"""
import argparse
import dataclasses
import gzip
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout

import torch  # noqa: E402

from llpf_core import UserError, apply_overrides, load_mode, load_preset, run_search  # noqa: E402
from llpf_core.checks import run_summary  # noqa: E402
from llpf_core.config import SearchConfig  # noqa: E402
from llpf_core.device import resolve_device  # noqa: E402
from llpf_core.modefile import Mode  # noqa: E402
from llpf_core.train import load_recipe, train_mode  # noqa: E402
from llpf_core.workspace import data_dir  # noqa: E402


def unpack_fashion_mnist(source: Path, root: Path) -> list[str]:
    """Unpack the ``*-ubyte.gz`` files in ``source`` or ``source/FashionMNIST/raw`` into torchvision's layout
    under ``root`` (``root/FashionMNIST/raw``), each once and atomically; returns the names unpacked."""
    raw = root / "FashionMNIST" / "raw"
    unpacked = []
    for gz in sorted({*source.glob("*-ubyte.gz"), *(source / "FashionMNIST" / "raw").glob("*-ubyte.gz")}):
        target = raw / gz.stem
        if target.exists():
            continue
        raw.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        with gzip.open(gz, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(tmp, target)
        unpacked.append(target.name)
    return unpacked


def compress_phases(cfg: SearchConfig, ticks: int) -> SearchConfig:
    """The preset's phases squeezed into ``ticks``: start ticks scaled by ticks / cfg.ticks, and each
    step_a raised so that a phase covers the same share of its remaining distance, 1 - (1 - a)^(T / N)."""
    scale = cfg.ticks / ticks
    phases = [dataclasses.replace(p, start_tick=int(p.start_tick / scale), step_a=1 - (1 - p.step_a) ** scale)
              for p in cfg.phases]
    return dataclasses.replace(cfg, ticks=ticks, phases=phases)


def modes_for(args, out: Path) -> tuple[list[Mode], list[float]]:
    """Two modes (seeds 1 and 2): the ones in ``out`` when they fit, else trained; with training seconds."""
    recipe = dataclasses.replace(load_recipe(args.recipe), epochs=args.epochs)
    modes, seconds = [], []
    for seed in (1, 2):
        path = out / f"mode{seed}.safetensors"
        if path.exists():
            mode = load_mode(path)
            if (mode.meta.model, mode.meta.dataset) == (args.model, args.dataset):
                print(f"mode {seed}: reusing {path} ({mode.meta.metrics})", flush=True)
                modes.append(mode)
                seconds.append(0.0)
                continue
            print(f"mode {seed}: {path} is a {mode.meta.model} on {mode.meta.dataset}; retraining", flush=True)
        t0 = time.perf_counter()
        mode = train_mode(args.model, args.dataset, seed, path, recipe, args.device, data_root=args.data_root,
                          recipe_name=args.recipe)
        seconds.append(time.perf_counter() - t0)
        print(f"mode {seed}: {mode.meta.metrics} in {seconds[-1]:.0f} s", flush=True)
        modes.append(mode)
    return modes, seconds


def search_config(preset: str, ticks: int | None, device: str, dtype: str, overrides: list[str]) -> SearchConfig:
    """The preset, compressed into ``ticks`` if given, in ``dtype`` with channels-last, plus ``overrides``."""
    cfg = load_preset(preset)
    if ticks:
        cfg = compress_phases(cfg, ticks)
    return apply_overrides(cfg, [f"device={device}", f"dtype={dtype}", "channels_last=true", *overrides])


def describe(device: torch.device, dtype: str) -> dict:
    """What this ran on: device name, torch and CUDA versions, dtype."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"device": str(device), "device_name": name, "torch": torch.__version__, "cuda": torch.version.cuda,
            "dtype": dtype}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--minutes", type=float, default=6.0, help="time budget for the search")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--dataset", default="fashion-mnist-rgb32")
    parser.add_argument("--recipe", default="resnet18-cifar10-paper")
    parser.add_argument("--preset", default="resnet18-cifar10-m2m-paper")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--ticks", type=int, help="compress the preset's phases into this many ticks")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="further search config overrides")
    parser.add_argument("--data-root", type=Path, default=None, help="data root (default $LLPF_HOME/data)")
    parser.add_argument("--out", default="bench-out/r18-fashion")
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file")
    args = parser.parse_args()
    out = Path(args.out)
    try:
        device = resolve_device(args.device)
        root = args.data_root or data_dir()
        unpacked = unpack_fashion_mnist(root, root)
        if unpacked:
            print(f"unpacked {', '.join(unpacked)} into {root / 'FashionMNIST' / 'raw'}")
        info = describe(device, args.dtype)
        print(f"{info['device_name']}, torch {info['torch']}, CUDA {info['cuda']}, {args.dtype}", flush=True)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        cfg = search_config(args.preset, args.ticks, str(device), args.dtype, args.set)  # refused before training
        modes, train_seconds = modes_for(args, out)
    except (UserError, OSError) as e:  # OSError: unpacking
        sys.exit(f"error: {e}")

    stop = threading.Event()
    timer = threading.Timer(args.minutes * 60, stop.set)
    timer.start()
    t0 = time.perf_counter()
    run_dir = out / time.strftime("run-%Y%m%d-%H%M%S", time.gmtime())
    try:
        run = run_search(modes[0], modes[1], cfg, run_dir, stop_event=stop, data_root=args.data_root)
    finally:
        timer.cancel()
    wall = time.perf_counter() - t0
    s = run_summary(run)
    m = run.metrics  # steps/s over ticks 2.., after the set-up and the baseline's evaluation
    steps, secs = int(m["iterations"].iloc[2:].sum()), float(m["wall_s"].iloc[-1] - m["wall_s"].iloc[1])
    figures = {**info, "run": str(run.path), "status": run.status, "ticks": s["ticks"], "ticks_planned": cfg.ticks,
               "phases": [p.start_tick for p in cfg.phases], "phases_reached": sorted(set(m["phase"].dropna())),
               "search_s": wall, "steps": steps, "steps_per_s": steps / max(secs, 1e-9),
               "barrier": s["barrier"], "path_max_train_loss": s["path_max_train_loss"],
               "final_distance_rel": s["final_distance_rel"], "train_s": train_seconds,
               "modes": [mode.meta.metrics for mode in modes]}
    if device.type == "cuda":
        figures["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    print(f"search: {s['ticks']} ticks in {wall:.0f} s ({run.status}, {run.path}); {steps} SGD steps in {secs:.0f} s "
          f"= {figures['steps_per_s']:.1f} steps/s including moves, corrections, evaluation and I/O")
    print(f"barrier {s['barrier']:.4f}, path max train loss {s['path_max_train_loss']:.4f}, "
          f"final distance_rel {s['final_distance_rel']:.4f}; phases reached {', '.join(figures['phases_reached'])}")
    if "peak_memory_gib" in figures:
        print(f"peak memory allocated {figures['peak_memory_gib']:.2f} GiB")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(json.dumps(figures, indent=1))
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
