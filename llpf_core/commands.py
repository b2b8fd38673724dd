"""The bodies of ``python -m llpf_core``'s subcommands, over the public API.

cli.py parses the arguments and imports this module only once a command runs, so that ``--help``
answers without importing torch.
"""
import json
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import fields, replace
from pathlib import Path

import torch
from tqdm import tqdm

from . import (
    ORIGIN,
    UserError,
    list_presets,
    load_mode,
    load_preset,
    load_run,
    resolve_config,
    run_search,
)
from .checks import independence, recheck, run_summary
from .device import warn
from .modefile import Mode
from .safefile import write_atomic
from .sanity import chance_warning
from .train import GENERIC_RECIPE, TrainRecipe, default_recipe, list_recipes, load_recipe, train_mode
from .workspace import workspace_dir


def _device(args) -> str | None:
    """The --device given (None if not given); an explicit ``auto`` without CUDA warns: the user
    expected a GPU, and the work runs on the CPU instead."""
    if args.device == "auto" and not torch.cuda.is_available():
        warn("--device auto: no CUDA GPU is available, running on the CPU")
    return args.device


@contextmanager
def _ctrl_c_stops(stop_event: threading.Event):
    """The first Ctrl-C asks the search to stop (it checkpoints); a second one aborts."""
    def handler(signum, frame):
        if stop_event.is_set():
            raise KeyboardInterrupt
        print("\nstopping at the end of this tick, then a checkpoint (Ctrl-C again to abort) ...", file=sys.stderr)
        stop_event.set()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _number(v: float) -> float | None:
    """None for a missing value (NaN), so that ``_fmt`` shows '-'."""
    return None if v != v else v


def _print_table(rows: list[tuple[str, object]]) -> None:
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {_fmt(v)}")


# --- commands -------------------------------------------------------------------------------------

def cmd_train(args) -> int:
    recipe_name = args.recipe or default_recipe(args.model, args.dataset)
    recipe = load_recipe(recipe_name)
    overrides = {f.name: getattr(args, f.name) for f in fields(TrainRecipe)
                 if getattr(args, f.name, None) is not None}
    recipe = replace(recipe, **overrides)
    bar = None

    def on_start():  # called once every input is checked: a user error before it prints one line only
        nonlocal bar
        if recipe_name == GENERIC_RECIPE:
            print(f"no tuned recipe for {args.model} on {args.dataset}: the generic one ({_recipe_text(recipe)})",
                  file=sys.stderr)
        bar = tqdm(total=recipe.epochs, desc=f"train {args.model} seed {args.seed}", unit="epoch",
                   disable=args.quiet, file=sys.stderr)

    def on_epoch(epoch, epochs, loss):
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")

    t0 = time.perf_counter()
    try:
        mode = train_mode(args.model, args.dataset, args.seed, args.out, recipe, _device(args) or "auto",
                          args.data_root,
                          on_epoch, recipe_name or "", on_start=on_start, download=args.download)
    finally:
        if bar is not None:
            bar.close()
    m = mode.meta.metrics
    print(f"saved {args.out}: train loss {m['train_loss']:.4f} acc {m['train_acc']:.4f}, test loss "
          f"{m['test_loss']:.4f} acc {m['test_acc']:.4f} ({time.perf_counter() - t0:.1f} s)")
    _warn_if_chance(mode.meta, args.out)
    return 0


def _recipe_text(recipe: TrainRecipe) -> str:
    return (f"{recipe.epochs} epochs of {recipe.optimizer}, lr {recipe.lr:g}, weight decay {recipe.weight_decay:g}, "
            f"batch {recipe.batch_size}, {recipe.schedule} schedule, {'' if recipe.augment else 'no '}augmentation")


def _warn_if_chance(meta, label) -> None:
    message = chance_warning(meta, str(label))
    if message:
        warn(message)


def cmd_connect(args) -> int:
    out = Path(args.out)
    resuming = args.resume and (out / "run.json").exists()
    if resuming:
        if args.set or args.preset or args.ticks or args.algorithm or args.seed is not None:
            warn("--resume continues with the config stored in run.json; --preset, --set, --ticks, --seed "
                 "and --algorithm are ignored (--device is used)")
        cfg, start, end, preset = None, args.start, args.end, "(from run.json)"
    else:
        start = load_mode(args.start, "start mode file")
        end = ORIGIN if args.end == ORIGIN else load_mode(args.end, "end mode file")
        for mode in (start, end):  # before any compute: a path from a mode that learned nothing means nothing
            if isinstance(mode, Mode):
                _warn_if_chance(mode.meta, mode.path)
        resolved = resolve_config(start.meta.model, start.meta.dataset, args.algorithm, preset=args.preset,
                                  overrides=args.set or [], to_origin=end == ORIGIN, ticks=args.ticks,
                                  seed=args.seed, device=_device(args))
        cfg, preset = resolved.config, resolved.preset
        if resolved.warning:
            warn(resolved.warning)
    stop = threading.Event()
    bar = None

    def on_tick(event):
        nonlocal bar
        if bar is None:  # the first tick: every check has passed
            if not args.quiet:
                print(f"{'resuming' if resuming else 'connecting'} {out} (preset {preset})", file=sys.stderr)
            bar = tqdm(total=event.total_ticks, initial=event.tick, desc=out.name, unit="tick",
                       disable=args.quiet, file=sys.stderr)
        bar.update(event.tick - bar.n)
        m = event.metrics
        bar.set_postfix(phase=event.phase, loss=_fmt(m.get("train_loss_rolling")), dist=_fmt(m.get("distance_rel")))

    with _ctrl_c_stops(stop):
        try:
            run = run_search(start, end, cfg, out, on_tick=on_tick, stop_event=stop, resume=args.resume,
                             data_root=args.data_root, device=_device(args) if resuming else None)
        finally:
            if bar is not None:
                bar.close()
    _print_run_summary(run)
    if run.status == "stopped":
        print(f"stopped; continue with: python -m llpf_core connect {args.start} {args.end} --out {out} --resume")
    return 0


def _print_run_summary(run) -> None:
    s = run_summary(run)
    rows = [("run", f"{run.path} ({s['status']}, {s['algorithm']}, {s['ticks']} ticks)"),
            ("barrier (straight line)", s["barrier"]),
            ("path max train loss", s["path_max_train_loss"]),
            ("path max / barrier", s.get("ratio")),
            ("continuity max loss", s["path_max_continuity_loss"]),
            ("final distance_rel", s["final_distance_rel"]),
            ("test loss start -> end", f"{_fmt(s.get('start_test_loss'))} -> {_fmt(s.get('end_test_loss'))}"),
            ("test acc start -> end", f"{_fmt(s.get('start_test_acc'))} -> {_fmt(s.get('end_test_acc'))}"),
            ("wall time (s)", s["wall_s"])]
    for spec, t in run.info.get("loss_thresholds", {}).items():
        rows.append((f"{spec} loss threshold used", f"{t['used']:.4g} (configured {t['configured']:g}, "
                     f"floor {t['loss_floor_factor']:g} x endpoint train loss {t['endpoint_train_loss']:.4g})"))
    sphere = run.info.get("sphere")
    if sphere:
        rows.append((f"{sphere['stage']} on the end's sphere",
                     f"reached after {sphere['ticks']} ticks" if sphere["reached"] else sphere["note"]))
    if run.error:
        rows.append(("error", run.error))
    _print_table(rows)


def cmd_check(args) -> int:
    run = load_run(args.run_dir)
    if args.baseline or args.continuity:
        results = recheck(run, args.baseline, args.continuity, args.data_root)
        if "baseline" in results:
            b = results["baseline"]
            write_atomic(run.path / "baseline.csv", b.to_csv(index=False).encode())
            print(f"baseline: {len(b)} points, barrier (max train loss) {b['train_loss'].max():.4g}")
        if "continuity" in results:
            c = results["continuity"]
            write_atomic(run.path / "continuity_saved_points.csv", c.to_csv(index=False).encode())
            print(f"continuity between {c['tick'].nunique()} consecutive saved points: max interpolated "
                  f"loss {c['loss'].max():.4g} (continuity_saved_points.csv)")
    _print_run_summary(load_run(args.run_dir))
    return 0


def cmd_inspect(args) -> int:
    path = Path(args.path)
    if path.is_dir():
        run = load_run(path)
        _print_run_summary(run)
        cfg = run.config
        print(f"\nconfig: algorithm {cfg.algorithm}, ticks {cfg.ticks}, {len(cfg.phases)} phase(s), "
              f"train lr {cfg.train.lr:g}, seed {cfg.seed}; start {run.info['start']['path']}, "
              f"end {run.info['end']['path'] if run.info['end'] else 'origin'}; {len(run.points())} saved points")
        return 0
    mode = load_mode(path)
    meta = mode.meta
    rows = [("file", path), ("format", meta.format), ("model", f"{meta.model} {json.dumps(meta.model_kwargs)}"),
            ("dataset", meta.dataset), ("seed", meta.seed), ("created", meta.created),
            ("parameters", sum(p.numel() for p in mode.model.parameters())),
            *[(k, v) for k, v in meta.metrics.items()],
            *[(k, v) for k, v in meta.extra.items()]]
    if meta.train_config.get("imported"):
        rows.insert(4, ("imported from", f"{meta.train_config['source']} (sha256 {meta.train_config['sha256']})"))
    _print_table(rows)
    return 0


def cmd_independence(args) -> int:
    result = independence(load_mode(args.a), load_mode(args.b))
    for row in result.table.itertuples():
        print(f"{row.layer:<40} {row.numel:>10}  cos {row.cosine:+.4f}")
    print(result.verdict)
    return 0


def cmd_demo(args) -> int:
    out = Path(args.out) if args.out else workspace_dir() / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    t0 = time.perf_counter()
    device = _device(args) or "cpu"  # the demo's tiny MLP is faster on the CPU than on a GPU
    recipe = load_recipe("mlp-digits")
    modes = []
    for seed in (1, 2):
        path = out / "modes" / f"mlp-digits-seed{seed}.safetensors"
        mode = train_mode("mlp", "digits", seed, path, recipe, device, None, None, "mlp-digits")
        m = mode.meta.metrics
        print(f"trained {path}: train loss {m['train_loss']:.4f}, test acc {m['test_acc']:.3f}")
        modes.append(mode)
    cfg = replace(load_preset("mlp-digits-m2m"), device=device)
    stop = threading.Event()
    with _ctrl_c_stops(stop):
        bar = tqdm(total=cfg.ticks, desc="M2M", unit="tick", disable=args.quiet, file=sys.stderr)
        run = run_search(modes[0], modes[1], cfg, out / "run", stop_event=stop,
                         on_tick=lambda e: bar.update(e.tick - bar.n))
        bar.close()
    s = run_summary(run)
    print()
    _print_run_summary(run)
    print(f"\nstraight-line barrier {s['barrier']:.4f} vs LLPF path max train loss "
          f"{s['path_max_train_loss']:.4f} ({s['barrier'] / max(s['path_max_train_loss'], 1e-12):.0f}x lower); "
          f"total {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_import(args) -> int:
    from .importer import import_state, parse_model_kwargs
    mode = import_state(args.state, args.model, args.dataset, args.out, parse_model_kwargs(args.model_kwargs),
                        args.seed, args.data_root)
    m = mode.meta.metrics
    print(f"saved {args.out}: {args.model} on {args.dataset}, train loss {m['train_loss']:.4f} acc "
          f"{m['train_acc']:.4f}, test loss {m['test_loss']:.4f} acc {m['test_acc']:.4f}")
    _warn_if_chance(mode.meta, args.out)
    return 0

def cmd_landscape(args) -> int:
    from .landscape import compute_landscape, validate_grid
    validate_grid(args.grid, args.margin, args.samples)  # before reading the run: a typo fails at once
    run = load_run(args.run_dir)
    bar = None

    def on_progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, initial=done, desc="landscape", unit="point", disable=args.quiet, file=sys.stderr)
        bar.update(done - bar.n)

    t0 = time.perf_counter()
    try:
        plane = compute_landscape(run, args.point, args.grid, args.margin, args.samples, _device(args) or "cpu",
                                  args.data_root, on_progress)
    finally:
        if bar is not None:
            bar.close()
    g = plane.grid
    p = plane.info["p"]
    worst = max(q["residual_rel"] for q in plane.info["projected"])
    print(f"plane through A, B and the point at tick {plane.info['point_tick']} (P = ({p[0]:.3f}, {p[1]:.3f}), "
          f"|B - A| {plane.info['scale']:.4g}): {len(g)} grid points, train loss {g['train_loss'].min():.4g} to "
          f"{g['train_loss'].max():.4g}; largest off-plane residual of a saved point {worst:.3g} "
          f"({time.perf_counter() - t0:.1f} s) -> {plane.path}")
    return 0


def cmd_layerwise(args) -> int:
    from .layerwise import compute_layerwise, parse_alphas
    alphas = parse_alphas(args.alphas)  # before loading anything: a typo fails at once
    if len(args.paths) > 2:
        raise UserError(f"layerwise takes START END or RUN, got {len(args.paths)} paths")
    if len(args.paths) == 2:
        if not args.out:
            raise UserError("layerwise START END needs --out DIR (the folder to write)")
        start, end = args.paths
    else:
        start, end = load_run(args.paths[0]), None
    bar = None

    def on_progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc="layerwise", unit="state", disable=args.quiet, file=sys.stderr)
        bar.update(done - bar.n)

    try:
        result = compute_layerwise(start, end, args.out, alphas, args.layers, samples=args.samples,
                                   device=_device(args) or "cpu", data_root=args.data_root, on_progress=on_progress)
    finally:
        if bar is not None:
            bar.close()
    info, s = result.info, result.summary
    print(f"A: train loss {info['A']['train_loss']:.4g}, B: {info['B']['train_loss']:.4g}; "
          f"{info['evaluations']} states evaluated on {info['samples']['train']}+{info['samples']['test']} samples "
          f"in {info['wall_s']:.1f} s")
    width = max(len(n) for n in s["layer"])
    print("train barrier: above the line between A's and B's losses, and (ends) above the line between the\n"
          "row's own alpha 0 and 1 (Adilova et al.'s layer-wise barrier)")
    print(f"{'layer':<{width}}  {'from A':>9}  {'from B':>9}  {'A, ends':>9}  {'B, ends':>9}")
    for row in s.itertuples():
        print(f"{row.layer:<{width}}  {row.train_barrier_A:9.4g}  {row.train_barrier_B:9.4g}  "
              f"{_fmt(_number(row.train_barrier_A_ends)):>9}  {_fmt(_number(row.train_barrier_B_ends)):>9}")
    print(f"-> {result.path}")
    return 0


def cmd_presets(args) -> int:
    presets, recipes = list_presets(), list_recipes()
    width = max(len(x) for x in [p.name for p in presets] + [r["name"] for r in recipes])
    for p in presets:
        target = f"{p.model}/{p.dataset}{' *' if p.default else ''}"
        print(f"{p.name:<{width}}  {p.algorithm:<5} {target:<26} {p.description}")
    print("\ntraining recipes (train --recipe NAME):")
    for r in recipes:
        target = f"{r['model']}/{r['dataset']}{' *' if r['default'] else ''}"
        print(f"{r['name']:<{width}}  {target:<32} {r['description']}")
    print("\n* the default for that model and dataset")
    return 0
