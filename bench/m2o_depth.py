"""How deep does M2O shrink the digits MLP for a given loss ceiling?

    python bench/m2o_depth.py [--seeds 1 2] [--thresholds 0.01 0.02 0.03 0.04] [--step-a 0.005 0.01]
                              [--budgets 100 200 300 400] [--threads 1] [--out DIR]

Trains the digits MLP modes (the demo's recipe, one per seed), then runs M2O from each with the
``mlp-digits-m2o`` preset for every training loss threshold (``train.loss_threshold``) and step size
(``phases.0.step_a``), for the largest tick budget. A run's first T ticks do not depend on its tick
budget, so each smaller budget T is read off the same run: each layer's variance relative to the start
at tick T, the whole-model norm relative to the start (``distance_rel``), and the path max train loss
(and continuity loss) over ticks 0..T.

Writes ``m2o_depth.csv`` (one row per seed, threshold, step size and budget), ``m2o_depth_mean.csv``
(the means over the seeds, also printed) and ``m2o_depth.html`` (plotly: each layer's variance ratio
reached against the path max train loss) to ``--out`` (default ``$LLPF_HOME/bench-results/m2o-depth``).
No PNG: kaleido is not a dependency.
"""
import argparse
import csv
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout

import torch  # noqa: E402

from llpf_core import apply_overrides, load_preset, run_search  # noqa: E402
from llpf_core.train import load_recipe, train_mode  # noqa: E402
from llpf_core.workspace import workspace_dir  # noqa: E402

PRESET = "mlp-digits-m2o"
FIELDS = ["seed", "loss_threshold", "step_a", "ticks", "path_max_train_loss", "path_max_continuity_loss",
          "distance_rel", "test_acc"]


def depth_rows(run, seed: int, threshold: float, step_a: float, budgets: list[int]) -> list[dict]:
    """One row per tick budget, read off one run's metrics.csv and layers.csv."""
    m, layers = run.metrics.set_index("tick"), run.layers
    rows = []
    for t in budgets:
        upto = m.loc[:t]
        at_t = layers[layers.tick == t].set_index("layer")["variance_rel"]
        row = {"seed": seed, "loss_threshold": threshold, "step_a": step_a, "ticks": t,
               "path_max_train_loss": upto["train_loss"].max(),
               "path_max_continuity_loss": upto["continuity_max_loss"].max(),
               "distance_rel": m.at[t, "distance_rel"], "test_acc": m.at[t, "test_acc"]}
        row.update({f"var_rel:{name}": v for name, v in at_t.items()})
        rows.append(row)
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    keys = list(rows[0])
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, keys)
        writer.writeheader()
        writer.writerows({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
    tmp.replace(path)


def mean_rows(rows: list[dict]) -> list[dict]:
    """Rows averaged over the seeds, one per (threshold, step size, budget)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["loss_threshold"], r["step_a"], r["ticks"]), []).append(r)
    out = []
    for (threshold, step_a, ticks), rs in groups.items():
        row = {"loss_threshold": threshold, "step_a": step_a, "ticks": ticks, "seeds": len(rs)}
        for k in rs[0]:
            if k not in ("seed", "loss_threshold", "step_a", "ticks"):
                row[k] = sum(r[k] for r in rs) / len(rs)
        out.append(row)
    return out


def write_figure(rows: list[dict], path: Path) -> None:
    """Per layer, the variance ratio reached against the path max train loss, one marker per run."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    layers = [k.split(":", 1)[1] for k in rows[0] if k.startswith("var_rel:")]
    fig = make_subplots(rows=1, cols=len(layers), subplot_titles=layers, shared_yaxes=False)
    configs = sorted({(r["step_a"], r["ticks"]) for r in rows})
    symbols = ["circle", "square", "diamond", "triangle-up", "x", "cross", "star", "hexagon"]
    for i, (step_a, ticks) in enumerate(configs):
        sel = [r for r in rows if (r["step_a"], r["ticks"]) == (step_a, ticks)]
        for j, layer in enumerate(layers):
            fig.add_trace(go.Scatter(
                x=[r["path_max_train_loss"] for r in sel], y=[r[f"var_rel:{layer}"] for r in sel],
                mode="markers", marker={"symbol": symbols[i % len(symbols)], "size": 8},
                marker_color=[r["loss_threshold"] for r in sel], marker_coloraxis="coloraxis",
                name=f"step_a {step_a:g}, {ticks} ticks", legendgroup=str(i), showlegend=j == 0,
                text=[f"seed {r['seed']}, threshold {r['loss_threshold']:g}" for r in sel]), row=1, col=j + 1)
            fig.update_xaxes(title_text="path max train loss", row=1, col=j + 1)
    fig.update_yaxes(title_text="variance / start's variance", row=1, col=1)
    fig.update_layout(title=f"M2O depth on the digits MLP ({PRESET}; colour: train.loss_threshold)",
                      coloraxis={"colorbar": {"title": "threshold"}}, height=450, width=300 * len(layers))
    tmp = path.with_name(path.name + ".tmp")
    fig.write_html(tmp, include_plotlyjs="cdn")
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.01, 0.02, 0.03, 0.04])
    parser.add_argument("--step-a", type=float, nargs="+", default=[0.005, 0.01])
    parser.add_argument("--budgets", type=int, nargs="+", default=[100, 200, 300, 400])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    budgets = sorted(args.budgets)
    args.out = args.out or workspace_dir() / "bench-results" / "m2o-depth"
    args.out.mkdir(parents=True, exist_ok=True)
    recipe = load_recipe("mlp-digits")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            mode = train_mode("mlp", "digits", seed, Path(tmp) / f"mlp-seed{seed}.safetensors", recipe, "cpu",
                              recipe_name="mlp-digits")
            for threshold in args.thresholds:
                for step_a in args.step_a:
                    cfg = apply_overrides(load_preset(PRESET), [f"train.loss_threshold={threshold}",
                                                                f"phases.0.step_a={step_a}"])
                    cfg = dataclasses.replace(cfg, ticks=budgets[-1], save_every=budgets[-1],
                                              checkpoint_every=budgets[-1], device="cpu")
                    t = time.perf_counter()
                    run = run_search(mode, "origin", cfg, Path(tmp) / f"s{seed}-t{threshold}-a{step_a}")
                    rows += depth_rows(run, seed, threshold, step_a, budgets)
                    print(f"seed {seed} threshold {threshold:g} step_a {step_a:g}: "
                          f"{time.perf_counter() - t:.1f} s", flush=True)
    write_csv(rows, args.out / "m2o_depth.csv")
    write_figure(rows, args.out / "m2o_depth.html")
    means = mean_rows(rows)
    write_csv(means, args.out / "m2o_depth_mean.csv")
    layer_keys = [k for k in means[0] if k.startswith("var_rel:")]
    print("threshold step_a ticks  path_max  cont_max  dist_rel  " + "  ".join(k[8:] for k in layer_keys))
    for r in means:
        print(f"{r['loss_threshold']:9g} {r['step_a']:6g} {r['ticks']:5d}  {r['path_max_train_loss']:8.4f}  "
              f"{r['path_max_continuity_loss']:8.4f}  {r['distance_rel']:8.3f}  "
              + "  ".join(f"{r[k]:.3f}".rjust(len(k) - 8) for k in layer_keys))
    print(f"wrote {args.out / 'm2o_depth.csv'}, {args.out / 'm2o_depth_mean.csv'}, {args.out / 'm2o_depth.html'}")


if __name__ == "__main__":
    main()
