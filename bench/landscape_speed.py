"""Speed of the landscape grid: the stacked (torch.func) engine against a plain loop over points.

    python bench/landscape_speed.py [--case digits|lenet5|both] [--grid 21] [--work-dir DIR]

digits: the digits MLP, the whole train and test splits (target <= 10 s on 2 cores).
lenet5: LeNet-5 on Fashion-MNIST, 2,000 samples per split (target <= 2 min); its two modes are trained
for one epoch here (the speed does not depend on how well they are trained).
Each case builds a short M2M run, then times, on the same grid and samples:
- engine: compute_landscape (stacked torch.func evaluation where it pays off, files written);
- evaluator loop: one state per point through the project's Evaluator (cached, pre-normalised batches);
- naive loop: what Garipov et al.'s plane.py does, model.load_state_dict per point and a DataLoader over
  the samples,
and prints them side by side with the speed-ups.
"""
import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout

from llpf_core import compute_landscape, load_preset, run_search  # noqa: E402
from llpf_core.landscape import PlaneEvaluator, grid_coords, run_plane  # noqa: E402
from llpf_core.train import load_recipe, train_mode  # noqa: E402

CASES = {"digits": ("mlp", "digits", "mlp-digits", "mlp-digits-m2m", None, 0),
         "lenet5": ("lenet5", "fashion-mnist", "lenet5-fashion-mnist", "lenet5-fashion-mnist-m2m", 1, 2000)}

def build_run(case: str, work: Path, ticks: int = 10):
    model, dataset, recipe, preset, epochs, samples = CASES[case]
    r = load_recipe(recipe)
    if epochs:
        r = replace(r, epochs=epochs)
    modes = [train_mode(model, dataset, seed, work / f"{case}-{seed}.safetensors", r, "cpu") for seed in (1, 2)]
    cfg = replace(load_preset(preset), ticks=ticks, save_every=5, device="cpu", baseline_points=0)
    return run_search(modes[0], modes[1], cfg, work / f"{case}-run"), samples

def plain_loop(run, tick: int, grid: int, samples: int) -> float:
    """The grid through the evaluator, loading one state per point (what the engine replaces)."""
    info = json.loads((run.path / "landscape" / f"plane-{tick:06d}" / "plane.json").read_text())
    engine = PlaneEvaluator(run, run_plane(run, tick), samples)
    ev, names, sizes = engine.evaluator, engine.plane.names, engine.sizes
    gx, gy = grid_coords(info["x"], info["y"], grid)
    t0 = time.perf_counter()
    for theta in engine.plane.points(gx, gy):
        state = dict(engine.state)
        for n, part, shape in zip(names, theta.split(sizes), engine.plane.shapes):
            state[n] = part.view(shape)
        ev.evaluate(state)
    return time.perf_counter() - t0

def naive_loop(run, tick: int, grid: int, samples: int) -> float:
    """The grid the textbook way: build a state dict per point, load_state_dict, iterate a DataLoader."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, Subset
    info = json.loads((run.path / "landscape" / f"plane-{tick:06d}" / "plane.json").read_text())
    engine = PlaneEvaluator(run, run_plane(run, tick), samples)
    ev, model = engine.evaluator, engine.model
    loaders = [DataLoader(Subset(data, idx.tolist()), batch_size=250)
               for data, idx in ((ev.train, ev.train_idx), (ev.test, ev.test_idx))]
    gx, gy = grid_coords(info["x"], info["y"], grid)
    t0 = time.perf_counter()
    with torch.no_grad():
        for theta in engine.plane.points(gx, gy):
            state = {k: v.clone() for k, v in engine.state.items()}
            for n, part, shape in zip(engine.plane.names, theta.split(engine.sizes), engine.plane.shapes):
                state[n] = part.view(shape)
            model.load_state_dict(state)
            for loader in loaders:
                loss = correct = 0.0
                for x, y in loader:
                    out = model(x)
                    loss += float(F.cross_entropy(out, y, reduction="sum"))
                    correct += float((out.argmax(1) == y).sum())
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", choices=["digits", "lenet5", "both"], default="both")
    ap.add_argument("--grid", type=int, default=21)
    ap.add_argument("--ticks", type=int, default=10)
    ap.add_argument("--work-dir")
    args = ap.parse_args()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="landscape-bench-"))
    results = []
    for case in (["digits", "lenet5"] if args.case == "both" else [args.case]):
        run, samples = build_run(case, work, args.ticks)
        t0 = time.perf_counter()
        plane = compute_landscape(run, grid=args.grid, samples=samples)
        engine_s = time.perf_counter() - t0
        loop_s = plain_loop(run, plane.info["point_tick"], args.grid, samples)
        naive_s = naive_loop(run, plane.info["point_tick"], args.grid, samples)
        results.append({"case": case, "grid": args.grid, "samples": plane.info["samples"], "engine_s": engine_s,
                        "plain_loop_s": loop_s, "naive_loop_s": naive_s, "speedup": loop_s / engine_s,
                        "speedup_naive": naive_s / engine_s})
    print(f"{'case':<8} {'grid':>5} {'train/test samples':>19} {'engine s':>9} {'evaluator loop s':>17} "
          f"{'naive loop s':>13} {'speed-up (evaluator/naive)':>27}")
    for r in results:
        s = r["samples"]
        print(f"{r['case']:<8} {r['grid']:>5} {s['train']:>9}/{s['test']:<9} {r['engine_s']:>9.2f} "
              f"{r['plain_loop_s']:>17.2f} {r['naive_loop_s']:>13.2f} "
              f"{r['speedup']:>12.1f}x / {r['speedup_naive']:.1f}x")
    print(json.dumps(results))

if __name__ == "__main__":
    main()
