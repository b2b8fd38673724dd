"""How close is an LLPF search to the bare training loop? Steps/s of both, their ratio, and where the
search's wall time goes.

    python bench/search_overhead.py [--device cpu|cuda] [--case NAME ...] [--repeat N] [--set key=value]
                                    [--case-seconds S] [--json PATH]

For each case, in one process (after a short warm-up of the bare loop):
  (b) the search, with the preset's defaults (the overrides a case needs are printed with it);
  (a) the bare loop: the same model and starting weights, batch size, optimizer and data pipeline
      (augmented batches drawn the same way, the same autocast and memory format), for as many SGD steps
      as the search took. It takes turns with the search: whenever the search has run for
      ``--window`` seconds (0.5 by default), its tick callback runs the bare loop for as many steps as
      the search took in that window, and that time is taken off the search's wall time. This shared
      machine's speed drifts by tens of percent within seconds, so a bare loop timed only before or after
      the search compares the two at different speeds; in alternating windows both see the same machine.
      The bare loop reads no loss until the end of each window, so it never waits for the host.
  (p) the plain loop, in the same turns: what a user would write by hand, the same model, starting weights,
      batch size and optimizer, but no augmentation and PyTorch's default memory format. Its ratio is the
      one a user sees who times a search against their own training loop.
The breakdown times the engine's own functions with light wrappers (each call is attributed to the
outermost timed function, so the baseline inside set-up counts as set-up). On CUDA these are host
times: work that was queued asynchronously is waited for, and counted, by the next function that reads a
result (training reads its losses, evaluation its metrics).

``--repeat N`` runs each case N times and prints the medians. ``--threads 1`` is the setting to measure
with on a small shared machine: with two OpenMP threads on two cores that other processes also use,
every parallel op waits for a descheduled thread, and the timings swing by 5x and more.

On CUDA the cases run in bf16 with channels-last, as a GPU search should, and the report adds the
training step's FLOP rate (from the bare loop's steps/s, and from the search's), its share of the card's
dense bf16 peak (which peak, and for which card name, is printed) and the peak memory allocated.
``--case-seconds`` stops each search after that many seconds (the bare loops' turns included), so a run
fits a time budget whatever the machine's speed; ``--json`` writes every run's figures to a file, rewritten
after each run.

Modes are trained once with the case's recipe and kept in ``--cache`` (default
``$LLPF_HOME/bench-modes``); cases with recipe ``-`` use seeded random initialisations (the synthetic
data has random labels, so training modes on it is pointless).
"""
import argparse
import dataclasses
import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import llpf_core.connect as connect  # noqa: E402
import llpf_core.driver as driver  # noqa: E402
from llpf_core import (  # noqa: E402
    UserError,
    apply_overrides,
    build_model,
    load_dataset,
    load_mode,
    load_preset,
    run_search,
    save_mode,
)
from llpf_core.device import autocast, resolve_device  # noqa: E402
from llpf_core.evaluate import Evaluator  # noqa: E402
from llpf_core.geometry import VarianceCorrection  # noqa: E402
from llpf_core.modefile import ModeMeta  # noqa: E402
from llpf_core.runfolder import RunWriter  # noqa: E402
from llpf_core.train import BatchStream, load_recipe, train_mode  # noqa: E402
from llpf_core.workspace import workspace_dir  # noqa: E402


@dataclasses.dataclass
class Case:
    model: str
    dataset: str
    preset: str
    recipe: str  # "-": seeded random initialisations
    overrides: dict[str, list[str]]  # per device type: --set items a case needs to run in bench time
    epochs: int | None = None  # train the modes for this many epochs instead of the recipe's


ALL_LAYERS = 'phases=[{"start_tick": 0, "layers": ["*"], "step_a": 0.001}]'
CUDA_SPEED = ["dtype=bfloat16", "channels_last=true"]
CASES = {
    "mlp-digits-m2m": Case("mlp", "digits", "mlp-digits-m2m", "mlp-digits", {}),
    # All of the preset's 2,000 ticks (about 14 minutes on a CPU); --set ticks=200 gives a quick look, where
    # the one-off set-up (the 11-point baseline, about 3 s) weighs ten times more.
    "lenet5-fashion-mnist-m2m": Case("lenet5", "fashion-mnist", "lenet5-fashion-mnist-m2m", "lenet5-fashion-mnist",
                                     {}),
    # The short search a user tries first: 200 ticks of the preset between two 1-epoch modes (about 6,400
    # steps: their loss is above the threshold, so ticks run long), where the set-up (the 11-point
    # baseline, the first evaluation) weighs ten times more than over 2,000 ticks.
    "lenet5-fashion-mnist-m2m-200": Case("lenet5", "fashion-mnist", "lenet5-fashion-mnist-m2m",
                                         "lenet5-fashion-mnist", {"cpu": ["ticks=200"], "cuda": ["ticks=200"]},
                                         epochs=1),
    # Random labels never reach the loss threshold, so every tick is capped at min_iters = 20 steps: the
    # shortest tick the preset allows, where per-tick overhead weighs most. The preset's last phase (every
    # layer moves) from tick 0, since the bench runs far fewer ticks than its phases span. On a CPU: a
    # few small ticks. On CUDA at the preset's batch of 256, in bf16 and channels-last.
    "resnet18-synthetic-m2m": Case("resnet18", "synthetic", "resnet18-cifar10-m2m-fdf", "-", {
        "cpu": [ALL_LAYERS, "ticks=3", "train.batch_size=32", "train.max_iters=20", "baseline_points=0"],
        "cuda": [ALL_LAYERS, "ticks=150", "train.max_iters=20"] + CUDA_SPEED}),
    # The same with max_iters = 100: after min_iters, the stop rule reads the loss after every step (80
    # per-step reads a tick), as the real presets do (max_iters 200 to 20,000).
    "resnet18-synthetic-m2m-loss-read": Case("resnet18", "synthetic", "resnet18-cifar10-m2m-fdf", "-", {
        "cpu": [ALL_LAYERS, "ticks=2", "train.batch_size=32", "train.max_iters=25", "baseline_points=0"],
        "cuda": [ALL_LAYERS, "ticks=30", "train.max_iters=100"] + CUDA_SPEED}),
}
DEFAULT_CASES = {"cpu": ["mlp-digits-m2m", "lenet5-fashion-mnist-m2m", "resnet18-synthetic-m2m"],
                 "cuda": ["resnet18-synthetic-m2m", "resnet18-synthetic-m2m-loss-read"]}

# label: functions whose (outermost) calls count toward it
TIMED = {
    "set-up (data, models, tick 0, baseline)": [(driver.Driver, "__init__"), (connect.LLPF, "begin"),
                                                (driver.Driver, "_baseline")],
    "train steps": [(connect, "train_until")],
    "move and variance correction": [(connect.LLPF, "_move"), (connect.LLPF, "_variance_targets"),
                                     (VarianceCorrection, "__call__")],
    "distances for the metrics row": [(connect.LLPF, "_layer_distances")],
    "evaluation (metrics, layers.csv)": [(Evaluator, "evaluate"), (connect.LLPF, "layer_rows")],
    "continuity": [(Evaluator, "line")],
    "I/O (CSV, points, checkpoints, run.json)": [
        (RunWriter, "append"), (RunWriter, "flush"), (RunWriter, "save_point"), (RunWriter, "save_checkpoint"),
        (RunWriter, "update")],
}
# Dense bf16 peaks from the vendors' datasheets: (pattern searched in torch.cuda.get_device_name, card,
# TFLOP/s), the most specific first: "NVIDIA H100 PCIe" and "NVIDIA H200 NVL" must not take the SXM's peak.
PEAK_BF16_TFLOPS = [
    (r"H200 NVL", "H200 NVL", 835.0),
    (r"H200", "H200 SXM", 989.4),
    (r"H100 NVL", "H100 NVL", 835.0),
    (r"H100 PCIe", "H100 PCIe", 756.0),
    (r"H100", "H100 SXM", 989.4),
    (r"A100", "A100", 312.0),
    (r"L40S", "L40S", 362.1),
    (r"\bL4\b", "L4", 121.0),
]


def bf16_peak(device_name: str) -> tuple[str, float] | None:
    """(card, dense bf16 TFLOP/s) of the first PEAK_BF16_TFLOPS pattern found in ``device_name``."""
    for pattern, card, peak in PEAK_BF16_TFLOPS:
        if re.search(pattern, device_name, re.IGNORECASE):
            return card, peak
    return None


class Timers:
    """Wraps the TIMED functions; each call counts toward the label of the outermost timed call."""

    def __init__(self):
        self.seconds, self.calls = Counter(), Counter()
        self.active = False
        self.saved = []
        for label, targets in TIMED.items():
            for owner, name in targets:
                original = getattr(owner, name)
                self.saved.append((owner, name, original))
                setattr(owner, name, self._wrap(label, original))

    def _wrap(self, label, original):
        def timed(*args, **kwargs):
            if self.active:
                return original(*args, **kwargs)
            self.active = True
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - t0
                self.calls[label] += 1
                self.active = False
        return timed

    def remove(self) -> None:
        for owner, name, original in self.saved:
            setattr(owner, name, original)


def make_modes(case: Case, device: torch.device, cache: Path) -> list[Path]:
    recipe = "random" if case.recipe == "-" else case.recipe + (f"-{case.epochs}-epochs" if case.epochs else "")
    folder = cache / case.model / case.dataset / recipe
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in (1, 2):
        path = folder / f"seed{seed}.safetensors"
        if not path.exists():
            if case.recipe != "-":
                print(f"  training mode {path} (once; kept for later runs)", flush=True)
                epochs = {"epochs": case.epochs} if case.epochs else {}
                train_mode(case.model, case.dataset, seed, path,
                           dataclasses.replace(load_recipe(case.recipe), **epochs), str(device),
                           recipe_name=case.recipe)
            else:
                torch.manual_seed(seed)
                kwargs = load_dataset(case.dataset).model_kwargs()
                save_mode(path, build_model(case.model, **kwargs), ModeMeta(case.model, kwargs, case.dataset, seed))
        paths.append(path)
    return paths


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class BareLoop:
    """Plain SGD on the search's model and settings, run a given number of steps at a time: by default with
    the search's data pipeline (augmentation, memory format); ``plain=True`` without augmentation, in
    PyTorch's default memory format."""

    def __init__(self, start: Path, cfg, device: torch.device, plain: bool = False):
        mode = load_mode(start)
        self.cfg, self.device = cfg, device
        data = load_dataset(mode.meta.dataset).to(device)
        self.model = build_model(mode.meta.model, **mode.meta.model_kwargs).to(device)
        self.model.load_state_dict(mode.model.state_dict())
        channels_last = cfg.channels_last and not plain
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.train.lr)
        self.stream = BatchStream(data, cfg.train.batch_size, torch.Generator(device).manual_seed(cfg.seed),
                                  augment=not plain, channels_last=channels_last)
        self.model.train()
        self.steps, self.seconds = 0, 0.0

    def run(self, steps: int) -> None:
        """Run ``steps`` SGD steps and add them and their time to the totals."""
        sync(self.device)
        t0 = time.perf_counter()
        total = torch.zeros((), device=self.device)
        for _ in range(steps):
            x, y = self.stream.next()
            with autocast(self.device, self.cfg.dtype):
                loss = F.cross_entropy(self.model(x).float(), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += loss.detach()
        total.item()
        self.seconds += time.perf_counter() - t0
        self.steps += steps


class Alternate:
    """A search's tick callback that runs the bare loops in turns with it: after every ``window`` seconds of
    search, as many steps of each loop as the search took meanwhile. ``seconds`` is the time spent here,
    which is taken off the search's wall time."""

    def __init__(self, loops: list[BareLoop], window: float):
        self.loops, self.window = loops, window
        self.pending, self.seconds = 0, 0.0
        self.since = time.perf_counter()

    def __call__(self, event) -> None:
        self.pending += event.metrics["iterations"]
        if self.pending and time.perf_counter() - self.since >= self.window:
            self.flush()

    def flush(self) -> None:
        sync(self.loops[0].device)  # the search's queued work is the search's time
        t0 = time.perf_counter()
        for loop in self.loops:
            loop.run(self.pending)
        self.pending = 0
        self.since = time.perf_counter()
        self.seconds += self.since - t0


def step_flops(bare: BareLoop) -> float:
    """FLOPs of one training step (forward and backward) of the bare loop's model and batches, counted by
    torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    x, y = bare.stream.next()
    with FlopCounterMode(display=False) as counter:
        with autocast(bare.device, bare.cfg.dtype):
            F.cross_entropy(bare.model(x).float(), y).backward()
    return float(counter.get_total_flops())


def run_case(name: str, case: Case, device: torch.device, cache: Path, extra: list[str], window: float,
             seconds: float | None = None) -> dict:
    """One run of a case; ``seconds``: stop the search after that long (the bare loops' turns included)."""
    a, b = make_modes(case, device, cache)
    overrides = case.overrides.get(device.type, []) + extra
    cfg = apply_overrides(dataclasses.replace(load_preset(case.preset), device=str(device)), overrides)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    bare, plain = BareLoop(a, cfg, device), BareLoop(a, cfg, device, plain=True)
    for loop in (bare, plain):
        loop.run(20)  # warm-up (allocator, kernel selection); not counted
        loop.steps, loop.seconds = 0, 0.0
    with tempfile.TemporaryDirectory() as tmp:
        timers = Timers()
        try:
            sync(device)
            t0 = time.perf_counter()
            alternate = Alternate([bare, plain], window)
            stop = threading.Event()
            timer = threading.Timer(seconds, stop.set) if seconds else None
            if timer:
                timer.start()
            run = run_search(a, b, cfg, Path(tmp) / "run", stop_event=stop, on_tick=alternate)
            sync(device)
            wall = time.perf_counter() - t0 - alternate.seconds
        finally:
            timers.remove()
            if timer:
                timer.cancel()
        alternate.flush()
        steps = int(run.metrics["iterations"].sum())
        ticks_run, status = int(run.metrics["tick"].max()), run.status
    assert bare.steps == plain.steps == steps, (bare.steps, plain.steps, steps)
    setup = timers.seconds["set-up (data, models, tick 0, baseline)"]
    result = {"case": name, "ticks": cfg.ticks, "ticks_run": ticks_run, "status": status,
              "steps": steps, "wall": wall, "bare": steps / bare.seconds,
              "search": steps / wall, "plain": steps / plain.seconds, "search_loop": steps / (wall - setup),
              "overrides": overrides, "dtype": cfg.dtype, "channels_last": cfg.channels_last,
              "device": str(device), "torch": torch.__version__,
              "parts": dict(timers.seconds), "calls": dict(timers.calls)}
    result["ratio"] = result["search"] / result["bare"]
    result["ratio_loop"] = result["search_loop"] / result["bare"]
    result["ratio_plain"] = result["search"] / result["plain"]
    if device.type == "cuda":
        result["flops"] = step_flops(bare)
        result["bare_tflops"] = result["flops"] * result["bare"] / 1e12
        result["search_tflops"] = result["flops"] * result["search"] / 1e12
        result["device_name"] = torch.cuda.get_device_name(device)
        result["cuda"] = torch.version.cuda
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        peak = bf16_peak(result["device_name"])
        if peak:
            result["peak_card"], result["peak_bf16_tflops"] = peak
            result["bare_share_of_peak"] = result["bare_tflops"] / peak[1]
            result["search_share_of_peak"] = result["search_tflops"] / peak[1]
    return result


def report(r: dict, device: torch.device) -> None:
    settings = r["dtype"] + (" channels-last" if r["channels_last"] else "")
    if r["overrides"]:
        settings += ", --set " + " ".join(r["overrides"])
    print(f"\n{r['case']} on {device} ({torch.get_num_threads()} threads): {r['ticks_run']} of {r['ticks']} ticks "
          f"({r['status']}), {r['steps']} SGD steps, {settings}")
    print(f"  (a) bare loop  {r['bare']:9.1f} steps/s   (in turns with the search)")
    print(f"  (b) search     {r['search']:9.1f} steps/s   ratio b/a = {r['ratio']:.3f}")
    print(f"      without set-up {r['search_loop']:9.1f} steps/s   ratio b/a = {r['ratio_loop']:.3f}")
    print(f"  (p) plain loop {r['plain']:9.1f} steps/s   (no augmentation, default memory format)   "
          f"ratio b/p = {r['ratio_plain']:.3f}")
    print(f"      {'breakdown of the search wall time':<42} {r['wall']:8.2f} s   calls   ms/call")
    for label, secs in r["parts"].items():
        calls = r["calls"].get(label, 0)
        print(f"      {label:<42} {secs:8.2f} s {100 * secs / r['wall']:5.1f} % {calls:6d} "
              f"{1000 * secs / max(calls, 1):9.2f}")
    other = r["wall"] - sum(r["parts"].values())
    print(f"      {'the rest (tick loop, events, state copies)':<42} {other:8.2f} s {100 * other / r['wall']:5.1f} %")
    if "flops" in r:
        print(f"      {r['device_name']}, torch {r['torch']}, CUDA {r['cuda']}; peak memory allocated "
              f"{r['peak_memory_gib']:.2f} GiB (search and both loops)")
        if "peak_card" in r:
            print(f"      dense bf16 peak: {r['peak_bf16_tflops']:g} TFLOP/s ({r['peak_card']} datasheet, matched in "
                  f"{r['device_name']!r})")
        else:
            print(f"      no dense bf16 peak known for {r['device_name']!r}")
        for label, key in (("bare loop's step rate", "bare"), ("search's step rate, set-up included", "search")):
            share = f" = {100 * r[key + '_share_of_peak']:.1f} % of the peak" if "peak_card" in r else ""
            print(f"      training step {r['flops'] / 1e9:.1f} GFLOP x the {label}: {r[key + '_tflops']:.1f} "
                  f"TFLOP/s{share}")


def write_json(path: Path, results: list[dict]) -> None:
    """All runs so far, replacing the file atomically (a killed run leaves the previous version)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--case", "--model", action="append", choices=list(CASES), dest="case",
                        help="a case (repeatable); default: every case for the device")
    parser.add_argument("--repeat", type=int, default=1, help="runs per case; medians are printed")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config overrides for every case (e.g. dtype=bfloat16)")
    parser.add_argument("--cache", type=Path, default=None, help="folder for the trained modes")
    parser.add_argument("--threads", type=int, help="torch intra-op threads for (a) and (b) alike")
    parser.add_argument("--window", type=float, default=0.5,
                        help="seconds of search between turns of the bare loop (default 0.5)")
    parser.add_argument("--case-seconds", type=float, help="stop each search after this many seconds")
    parser.add_argument("--json", type=Path, help="write every run's figures to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)
    except UserError as e:
        sys.exit(f"error: {e}")
    cache = args.cache or workspace_dir() / "bench-modes"
    every_run = []
    for name in args.case or DEFAULT_CASES[device.type]:
        results = []
        for _ in range(args.repeat):
            results.append(run_case(name, CASES[name], device, cache, args.set, args.window, args.case_seconds))
            report(results[-1], device)
            every_run.append(results[-1])
            if args.json:
                write_json(args.json, every_run)
        if args.repeat > 1:
            keys = ("bare", "plain", "search", "ratio", "ratio_loop", "ratio_plain")
            med = {k: statistics.median(r[k] for r in results) for k in keys}
            print(f"\n  median of {args.repeat} runs: bare {med['bare']:.1f} steps/s, plain {med['plain']:.1f} "
                  f"steps/s, search {med['search']:.1f} steps/s, ratio b/a {med['ratio']:.3f} (without set-up "
                  f"{med['ratio_loop']:.3f}), ratio b/p {med['ratio_plain']:.3f}; ratios b/a "
                  + ", ".join(f"{r['ratio']:.3f}" for r in results) + "; b/p "
                  + ", ".join(f"{r['ratio_plain']:.3f}" for r in results))


if __name__ == "__main__":
    main()
