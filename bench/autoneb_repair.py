"""AutoNEB on two digits MLPs, and REPAIR on two LeNet-5 Fashion-MNIST modes (llpf_core/neb.py,
llpf_core/repair.py; docs/autoneb-repair.md).

    python bench/autoneb_repair.py [--work-dir DIR] [--lenet-autoneb] [--device cpu]

Modes are trained once into --work-dir (digits MLPs with the default recipe, seeds 3101 and 3102;
LeNet-5 for 2 epochs of its Fashion-MNIST recipe, seeds 3201 and 3202) and reused on later runs.
Digits: the straight line's max train loss (21 points, whole split) against AutoNEB's with the
default settings (its pivots and its final dense evaluation), its SGD steps and wall time.
LeNet-5: the train loss (10,000 fixed samples) along the straight line, the weight-matched line and
the REPAIRed weight-matched line; --lenet-autoneb also runs AutoNEB between the LeNet-5 modes.
Prints one JSON object.
"""
import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from llpf_core.data import load_dataset
from llpf_core.evaluate import Evaluator
from llpf_core.methods.rebasin import apply_permutation, permutation_spec, weight_matching
from llpf_core.modefile import load_mode
from llpf_core.neb import AutoNEB, AutoNEBSettings, evaluator_loss
from llpf_core.registry import build_model
from llpf_core.repair import Repair, repair_inputs
from llpf_core.train import BatchStream, load_recipe, train_mode

TS = [0.0, 0.25, 0.5, 0.75, 1.0]


def modes(model: str, dataset: str, recipe, seeds, work: Path, device: str):
    out = []
    for seed in seeds:
        path = work / f"{model}-{dataset}-{seed}.safetensors"
        if not path.exists():
            train_mode(model, dataset, seed, path, recipe, device)
        out.append(load_mode(path))
    return [{k: v.to(device) for k, v in m.model.state_dict().items()} for m in out]


def autoneb(model: str, dataset: str, a, b, eval_samples: int, device: str) -> dict:
    train, test = load_dataset(dataset, "train").to(device), load_dataset(dataset, "test").to(device)
    kwargs = train.model_kwargs()
    evaluator = Evaluator(build_model(model, **kwargs).to(device), train, test, eval_samples, 0, 10, 64)
    line = [r["train_loss"] for r in evaluator.line(a, b, [i / 20 for i in range(21)])]
    settings = AutoNEBSettings()
    stream = BatchStream(train, settings.batch_size, torch.Generator(device).manual_seed(0))
    neb = AutoNEB(build_model(model, **kwargs).to(device), a, b, stream,
                  evaluator_loss(evaluator, settings.dense_samples, 0), settings)
    t0 = time.perf_counter()
    neb.advance(neb.total_steps)
    wall = time.perf_counter() - t0
    pivots = [evaluator.evaluate(s)["train_loss"] for s in neb.path_states()]
    return {"straight_max": max(line), "straight_ends": [line[0], line[-1]], "pivot_losses": pivots,
            "path_max": max(pivots), "dense_max": neb.history[-1]["dense_max"],
            "sgd_steps": neb.sgd_steps, "wall_s": round(wall, 1), "history": neb.history}


def repair(a, b, device: str) -> dict:
    train, test = load_dataset("fashion-mnist", "train").to(device), load_dataset("fashion-mnist", "test").to(device)
    kwargs = train.model_kwargs()
    evaluator = Evaluator(build_model("lenet5", **kwargs).to(device), train, test, 10000, 0, 10, 64)
    spec = permutation_spec("lenet5", a)
    aligned = apply_permutation(spec, weight_matching(spec, a, b), b)
    t0 = time.perf_counter()
    rep = Repair(build_model("lenet5", **kwargs).to(device), a, aligned, repair_inputs(train, 2000, 7))
    points = [rep.point(t) for t in TS]
    wall = time.perf_counter() - t0
    loss = lambda rows: [round(r["train_loss"], 4) for r in rows]  # noqa: E731
    return {"t": TS, "straight": loss(evaluator.line(a, b, TS)), "aligned": loss(evaluator.line(a, aligned, TS)),
            "aligned_repaired": loss([evaluator.evaluate(p) for p in points]),
            "straight_repaired_mid": loss([evaluator.evaluate(Repair(rep.model, a, b, rep.inputs).point(0.5))])[0],
            "repair_wall_s": round(wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=Path("bench-autoneb-repair"))
    parser.add_argument("--lenet-autoneb", action="store_true")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    out = {}
    a, b = modes("mlp", "digits", load_recipe("mlp-digits"), (3101, 3102), args.work_dir, args.device)
    out["digits_mlp_autoneb"] = autoneb("mlp", "digits", a, b, 0, args.device)
    lenet = replace(load_recipe("lenet5-fashion-mnist"), epochs=2)
    a, b = modes("lenet5", "fashion-mnist", lenet, (3201, 3202), args.work_dir, args.device)
    out["lenet5_repair"] = repair(a, b, args.device)
    if args.lenet_autoneb:
        out["lenet5_autoneb"] = autoneb("lenet5", "fashion-mnist", a, b, 10000, args.device)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
