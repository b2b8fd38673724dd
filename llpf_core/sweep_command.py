"""``llpf sweep``: many pairs from the command line (the sweep itself is sweep.py)."""
import signal
import sys

from .commands import _fmt
from .errors import UserError
from .train import default_recipe


def cmd_sweep(args) -> int:
    from .sweep import plan_sweep, run_sweep
    spec = None
    if args.resume and args.model is None and args.modes is None:
        given = [name for name, value in [("--dataset", args.dataset), ("--pairs", args.pairs), ("--seed", args.seed),
                                          ("--preset", args.preset), ("--algorithm", args.algorithm),
                                          ("--set", args.set), ("--pair-set", args.pair_set),
                                          ("--recipe", args.recipe)] if value is not None]
        if given:  # resume rebuilds from sweep.json, never from the command line
            raise UserError(f"--resume continues the sweep stored in {args.out} as it is; drop {', '.join(given)} "
                            f"(to change the search, start a new sweep with another --out)")
    else:
        pair_sets: dict[str, list[str]] = {}
        for item in args.pair_set or []:
            name, sep, override = item.partition(":")
            if not sep or "=" not in override:
                raise UserError(f"--pair-set {item!r}: write PAIR:KEY=VALUE, e.g. seed1-seed2:train.lr=0.01")
            pair_sets.setdefault(name, []).append(override)
        dataset = args.dataset or "digits"
        spec = plan_sweep(args.model, dataset, args.pairs, 1 if args.seed is None else args.seed, preset=args.preset,
                          algorithm=args.algorithm, overrides=args.set,
                          recipe=args.recipe or (None if args.modes else default_recipe(args.model or "", dataset)),
                          modes=args.modes, pair_overrides=pair_sets)
    say = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a stopped sweep marks its pairs interrupted
    result = run_sweep(args.out, spec, resume=args.resume, workers=args.workers, ray_address=args.ray_address,
                       cpus_per_path=args.cpus_per_path, gpus_per_path=args.gpus_per_path, threads=args.threads,
                       on_event=say, batch=args.batch)
    for p in result.pairs:
        s = p.get("summary") or {}
        print(f"{p['name']:<20} {p['status']:<11} barrier {_fmt(s.get('barrier'))}  path max "
              f"{_fmt(s.get('path_max_train_loss'))}  distance_rel {_fmt(s.get('final_distance_rel'))}"
              + (f"  error: {p['error']}" if p.get("error") else ""))
    print(f"summary: {result.out / 'summary.csv'}")
    return result.exit_code
