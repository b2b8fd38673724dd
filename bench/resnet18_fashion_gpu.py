"""ResNet-18 on Fashion-MNIST (padded to 32x32x3): train two modes, connect them, report the numbers.

The prepared GPU check of the model-zoo issue; it runs on a CPU too, slowly:

    python bench/resnet18_fashion_gpu.py --device cuda --epochs 3 --minutes 6 --out /tmp/r18

A small dry run on a CPU: --model cnn --dataset digits --recipe cnn-digits --preset cnn-digits-m2m.
It trains two modes (seeds 1 and 2), then runs the paper-structured M2M preset until it finishes or the
time budget is spent (the run stops with a checkpoint, so `connect ... --resume` can continue it), and
prints the training steps/s, the straight-line barrier and the path's maximum train loss.
"""
import argparse
import dataclasses
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout

from llpf_core import apply_overrides, load_preset, run_search
from llpf_core.checks import run_summary
from llpf_core.train import load_recipe, train_mode


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
    parser.add_argument("--out", default="bench-out/r18-fashion")
    args = parser.parse_args()
    out = Path(args.out)

    recipe = dataclasses.replace(load_recipe(args.recipe), epochs=args.epochs)
    modes = []
    for seed in (1, 2):
        t0 = time.perf_counter()
        mode = train_mode(args.model, args.dataset, seed, out / f"mode{seed}.safetensors", recipe, args.device)
        print(f"mode {seed}: {mode.meta.metrics} in {time.perf_counter() - t0:.0f} s", flush=True)
        modes.append(mode)

    cfg = apply_overrides(load_preset(args.preset), [f"device={args.device}", f"dtype={args.dtype}",
                                                     "channels_last=true"])
    stop = threading.Event()
    timer = threading.Timer(args.minutes * 60, stop.set)
    timer.start()
    t0 = time.perf_counter()
    run = run_search(modes[0], modes[1], cfg, out / "run", stop_event=stop)
    timer.cancel()
    wall = time.perf_counter() - t0
    s = run_summary(run)
    m = run.metrics  # steps/s over ticks 2.., after the set-up and the baseline's evaluation
    steps, secs = int(m["iterations"].iloc[2:].sum()), float(m["wall_s"].iloc[-1] - m["wall_s"].iloc[1])
    print(f"search: {s['ticks']} ticks in {wall:.0f} s ({run.status}); {steps} SGD steps in {secs:.0f} s "
          f"= {steps / max(secs, 1e-9):.1f} steps/s including moves, corrections, evaluation and I/O")
    print(f"barrier {s['barrier']:.4f}, path max train loss {s['path_max_train_loss']:.4f}, "
          f"final distance_rel {s['final_distance_rel']:.4f}")


if __name__ == "__main__":
    main()
