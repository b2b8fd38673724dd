"""Layer-wise connectivity: its time, whether stacking the states in one vmap pays, and whether the
seeded layer order (lowest barrier first) helps an LLPF search.

    python bench/layerwise_speed.py [--case digits|lenet5] [--work-dir DIR] [--order] [--ticks N]

digits: the digits MLP, whole splits; lenet5: LeNet-5 on Fashion-MNIST, its preset's 2,000 samples per split,
modes trained for two epochs here (seeds 4141 and 4242, which no test uses) unless already in --work-dir.
Prints the analysis's wall time with the engine's choice (stacked vmap for fully connected models, one state
at a time otherwise) and with the other one. With --order, also runs the preset's search and the same search
with the layer order the dashboard's heuristic seeds (app/layer_order.from_barriers), and prints the path's
highest train loss, the final distance to B (relative) and the wall time of each (--ticks caps both).
"""
import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "app"))

import layer_order  # noqa: E402

from llpf_core import compute_layerwise, load_mode, load_preset, run_search, run_summary  # noqa: E402
from llpf_core.layerwise import MixEvaluator, parameter_layers  # noqa: E402
from llpf_core.train import load_recipe, train_mode  # noqa: E402

CASES = {"digits": ("mlp", "digits", "mlp-digits", "mlp-digits-m2m", None),
         "lenet5": ("lenet5", "fashion-mnist", "lenet5-fashion-mnist", "lenet5-fashion-mnist-m2m", 2)}
SEEDS = (4141, 4242)
REPEATS = 3


def modes(case: str, work: Path) -> list[Path]:
    model, dataset, recipe, _, epochs = CASES[case]
    r = load_recipe(recipe)
    if epochs:
        r = replace(r, epochs=epochs)
    paths = [work / f"{case}-{seed}.safetensors" for seed in SEEDS]
    for seed, path in zip(SEEDS, paths):
        if not path.exists():
            train_mode(model, dataset, seed, path, r, "cpu")
    return paths


def time_per_state(a: Path, b: Path, cfg, batched: bool) -> float:
    """Seconds per state to evaluate the distinct single-layer mixes, stacked or one at a time."""
    ma, mb = load_mode(a), load_mode(b)
    layers = parameter_layers(ma.model)
    engine = MixEvaluator(ma, mb, layers, cfg, None, "cpu", None)
    n = len(layers)
    mixes = list(dict.fromkeys(tuple(alpha if i == j else rest for i in range(n)) + (rest,)
                               for j in range(n) for rest in (0.0, 1.0) for alpha in (0, .25, .5, .75, 1)))
    engine.batched, engine.per_pass = batched, (max(engine.per_pass, 16) if batched else 1)
    t0 = time.perf_counter()
    for i in range(0, len(mixes), engine.per_pass):
        engine.evaluate(mixes[i:i + engine.per_pass])
    return (time.perf_counter() - t0) / len(mixes)


def search(a: Path, b: Path, cfg, out: Path) -> dict:
    t0 = time.perf_counter()
    run = run_search(a, b, cfg, out)
    s = run_summary(run)
    return {"path max train loss": s["path_max_train_loss"], "final distance_rel": s["final_distance_rel"],
            "barrier": s["barrier"], "wall s": time.perf_counter() - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", choices=list(CASES), default="digits")
    p.add_argument("--work-dir", default="/tmp/llpf-layerwise-bench")
    p.add_argument("--order", action="store_true", help="also compare the seeded layer order with the preset's")
    p.add_argument("--ticks", type=int, help="cap both searches at this many ticks")
    args = p.parse_args()
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    a, b = modes(args.case, work)
    cfg = load_preset(CASES[args.case][3])
    t0 = time.perf_counter()
    result = compute_layerwise(a, b, work / f"{args.case}-layerwise")
    wall = time.perf_counter() - t0
    info = result.info
    print(f"{args.case}: {info['evaluations']} states, {len(result.table)} rows, {info['samples']['train']}+"
          f"{info['samples']['test']} samples: {wall:.1f} s in all ({info['wall_s']:.1f} s evaluating, "
          f"{'stacked' if info['batched'] else 'one state at a time'})")
    times = {True: [], False: []}
    for _ in range(REPEATS):  # interleaved, the best of each: the machine may be shared
        for batched in times:
            times[batched].append(time_per_state(a, b, cfg, batched))
    mine, other = min(times[info["batched"]]), min(times[not info["batched"]])
    print(f"per state (single-layer mixes): engine's choice {mine * 1000:.1f} ms, the other "
          f"{'stacked' if not info['batched'] else 'one at a time'} {other * 1000:.1f} ms ({other / mine:.2f}x)")
    print(result.summary[["layer", "train_barrier_A", "train_barrier_B", "train_barrier_A_ends",
                          "train_barrier_B_ends"]].to_string(index=False))
    print(result.table[result.table["alpha"] == 0.5].to_string(index=False))
    if not args.order:
        return
    if args.ticks:
        cfg = replace(cfg, ticks=args.ticks)
    cfg = replace(cfg, device="cpu")
    seeded_table = layer_order.from_barriers(result, cfg)
    phases, ticks = layer_order.phases(seeded_table, cumulative=True)
    print("seeded phases:", "; ".join(f"from tick {ph.start_tick}: {', '.join(ph.layers)}" for ph in phases))
    stamp = time.strftime("%H%M%S")
    for name, c in (("preset", cfg), ("seeded", replace(cfg, phases=phases, ticks=ticks))):
        print(name, {k: round(v, 4) for k, v in search(a, b, c, work / f"{args.case}-{name}-{stamp}").items()},
              flush=True)


if __name__ == "__main__":
    main()
