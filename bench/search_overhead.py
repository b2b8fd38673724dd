"""How close is an LLPF search to the bare training loop? Steps/s of both, their ratio, and where the
search's wall time goes.

    python bench/search_overhead.py [--device cpu|cuda] [--case mlp-digits-m2m ...] [--ticks N]

For each case, in one process and one after the other:
  (b) the search, with the preset's settings (under cProfile, for the breakdown);
  (a) the bare loop: the same model, batch size, optimizer and data pipeline (augmented batches drawn
      the same way), for as many SGD steps as the search took.
cProfile adds a little overhead to (b), so the ratio is a slight underestimate.
"""
import argparse
import cProfile
import dataclasses
import pstats
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from llpf_core import build_model, load_dataset, load_preset, run_search, save_mode  # noqa: E402
from llpf_core.device import resolve_device  # noqa: E402
from llpf_core.modefile import ModeMeta  # noqa: E402
from llpf_core.train import BatchStream, load_recipe, train_mode  # noqa: E402

# case: (model, dataset, preset, recipe for the two modes or None for random initialisations)
CASES = {
    "mlp-digits-m2m": ("mlp", "digits", "mlp-digits-m2m", "mlp-digits"),
    "lenet5-fashion-mnist-m2m": ("lenet5", "fashion-mnist", "lenet5-fashion-mnist-m2m", None),
    "cnn-synthetic-m2m": ("cnn", "synthetic", "cnn-digits-m2m", None),
}
# Where the search's time goes: cumulative time of these functions, none of which calls another, except
# that the baseline (Evaluator.line without idx) calls Evaluator.evaluate, subtracted from "continuity".
BREAKDOWN = {
    "train steps": ("train.py", "train_until"),
    "move": ("geometry.py", "move_"),
    "variance correction": ("connect.py", "_correct_variance"),
    "evaluation (points and baseline)": ("evaluate.py", "evaluate"),
    "continuity": ("evaluate.py", "line"),
    "layer rows": ("connect.py", "_layer_rows"),
    "I/O (CSV, points, checkpoints)": ("runfolder.py", "append|save_point|save_checkpoint"),
}


def make_modes(model, dataset, recipe, device, folder):
    paths = []
    for seed in (1, 2):
        path = folder / f"{model}-{seed}.safetensors"
        if recipe:
            train_mode(model, dataset, seed, path, load_recipe(recipe), str(device))
        else:
            torch.manual_seed(seed)
            kwargs = load_dataset(dataset).model_kwargs()
            save_mode(path, build_model(model, **kwargs), ModeMeta(model, kwargs, dataset, seed))
        paths.append(path)
    return paths


def bare_loop(model_name, dataset, cfg, steps, device) -> float:
    data = load_dataset(dataset).to(device)
    torch.manual_seed(0)
    model = build_model(model_name, **data.model_kwargs()).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.train.lr)
    stream = BatchStream(data, cfg.train.batch_size, torch.Generator(device).manual_seed(0))
    model.train()
    t0 = time.perf_counter()
    for _ in range(steps):
        x, y = stream.next()
        loss = F.cross_entropy(model(x), y)
        loss.item()  # the search reads every loss for its stop rule; so does the bare loop
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - t0)


def breakdown(profile: cProfile.Profile) -> dict[str, float]:
    stats = pstats.Stats(profile).stats
    out = {}
    for label, (file, pattern) in BREAKDOWN.items():
        out[label] = sum(v[3] for (f, _, fn), v in stats.items()
                         if f.endswith(file) and re.fullmatch(pattern, fn))
    for (f, _, fn), v in stats.items():  # evaluate() called by line() is the baseline, counted above
        if f.endswith("evaluate.py") and fn == "evaluate":
            out["continuity"] -= sum(c[3] for (cf, _, cfn), c in v[4].items() if cfn == "line")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--case", action="append", choices=list(CASES))
    parser.add_argument("--ticks", type=int, help="override the preset's tick count")
    args = parser.parse_args()
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.case or list(CASES):
            model, dataset, preset, recipe = CASES[case]
            a, b = make_modes(model, dataset, recipe, device, Path(tmp))
            cfg = dataclasses.replace(load_preset(preset), device=str(device))
            if args.ticks:
                cfg = dataclasses.replace(cfg, ticks=args.ticks)
            profile = cProfile.Profile()
            t0 = time.perf_counter()
            profile.enable()
            run = run_search(a, b, cfg, Path(tmp) / case, stop_event=threading.Event())
            profile.disable()
            wall = time.perf_counter() - t0
            steps = int(run.metrics["iterations"].sum())
            search_rate = steps / wall
            bare_rate = bare_loop(model, dataset, cfg, steps, device)
            print(f"\n{case} on {device}: {cfg.ticks} ticks, {steps} SGD steps")
            print(f"  (a) bare loop  {bare_rate:8.1f} steps/s")
            print(f"  (b) search     {search_rate:8.1f} steps/s   ratio b/a = {search_rate / bare_rate:.3f}")
            parts = breakdown(profile)
            for label, secs in parts.items():
                print(f"      {label:<32} {secs:7.2f} s  {100 * secs / wall:5.1f} %")
            other = wall - sum(parts.values())
            print(f"      {'set-up, baseline and the rest':<32} {other:7.2f} s  {100 * other / wall:5.1f} %")


if __name__ == "__main__":
    main()
