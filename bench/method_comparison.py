"""Per-method comparison tables of finished sweeps (llpf_core.comparison), as markdown for
docs/autoneb-repair.md. Run the sweeps first, e.g.

    python -m llpf_core sweep --out sweeps/digits5 --model mlp --pairs 5 --seed 501 \
        --algorithm linear,rebasin,bezier,autoneb,m2m --workers 2
    python -m llpf_core sweep --out sweeps/digits5-repair --modes sweeps/digits5/modes/seed50{1..9}.safetensors \
        sweeps/digits5/modes/seed510.safetensors --algorithm rebasin --set curve.repair=true
    python bench/method_comparison.py sweeps/digits5 sweeps/digits5-repair

Wall times are each run's own wall clock (the sweep ran two pairs at once on a shared machine).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from a checkout
from llpf_core import method_table, sweep_runs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="+", help="sweep folders on the same seeds")
    args = parser.parse_args()
    table = method_table(sweep_runs(args.sweeps))
    print("| method | pairs | path max (mean ± std) | worst pair (path max) | path max / barrier | SGD steps "
          "| wall s (mean) |")
    print("|---|---|---|---|---|---|---|")
    for _, r in table.iterrows():
        std = "" if r["path max std"] != r["path max std"] else f" ± {r['path max std']:.3g}"
        print(f"| {r['method']} | {r['pairs']} | {r['path max mean']:.3g}{std} | {r['worst pair']} "
              f"({r['worst path max']:.3g}) | {r['ratio mean']:.3g} | {r['SGD steps mean']:.0f} "
              f"| {r['wall s mean']:.0f} |")
    if len(table):
        print(f"\nbarrier (straight line, mean over the pairs): {table['barrier mean'].iloc[0]:.3g}")


if __name__ == "__main__":
    main()
