"""The landscape plane: its geometry, its grid against an independent evaluation, resume and bad input."""
import json
import random
import shutil
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli
from safetensors.torch import load_file

from llpf_core import compute_landscape, load_dataset, load_preset, load_run, run_search
from llpf_core.landscape import PlaneEvaluator, make_plane, plane_dir, project_run, run_plane
from llpf_core.registry import build_model


@pytest.fixture(scope="module")
def run(digits_modes, tmp_path_factory):
    """A short M2M run on the digits MLP, a point saved every 10 ticks."""
    cfg = replace(load_preset("mlp-digits-m2m"), ticks=30, save_every=10, device="cpu")
    out = tmp_path_factory.mktemp("runs") / "r"
    return run_search(digits_modes[0], digits_modes[1], cfg, out)


def test_a_b_and_p_land_on_their_coordinates_with_zero_residual():
    torch.manual_seed(0)
    a, b, p = torch.randn(3, 50)
    plane = make_plane(["w"], [torch.Size([50])], a, b, p)
    d, u = (p - a).double(), (b - a).double()
    px = float(d @ u / (u @ u))
    py = float((d - px * u).norm() / u.norm())
    for theta, (x, y) in ((a, (0, 0)), (b, (1, 0)), (p, (px, py))):
        cx, cy, r = plane.coords(theta)
        assert (cx, cy) == pytest.approx((x, y), abs=1e-6) and r == pytest.approx(0, abs=1e-6)
    assert py > 0
    # a point off the plane by a known distance along a direction orthogonal to it
    off = torch.randn(50).double()
    for w in (u, plane.v.double()):
        off -= (off @ w) / (w @ w) * w
    off = off / off.norm() * 0.3 * u.norm()
    x, y, r = plane.coords((a.double() + 0.25 * u + 0.5 * u.norm() * plane.v.double() + off).float())
    assert (x, y, r) == pytest.approx((0.25, 0.5, 0.3), abs=1e-5)


def test_the_plane_at_each_saved_point_gives_the_logged_loss(run):
    plane_run = compute_landscape(run, grid=5)
    tick = plane_run.info["point_tick"]
    metrics = run.metrics.set_index("tick")
    engine = PlaneEvaluator(run, run_plane(run, tick))
    by_tick = {q["tick"]: q for q in plane_run.info["projected"]}
    assert by_tick[tick]["residual_rel"] < 1e-6 and by_tick[0]["residual_rel"] < 1e-6
    assert (by_tick[0]["x"], by_tick[0]["y"]) == pytest.approx((0, 0), abs=1e-7)
    for t in (0, tick):  # on the plane exactly: the run's own evaluation at A and at P
        q = by_tick[t]
        got = engine.evaluate(torch.tensor([q["x"]], dtype=torch.float64), torch.tensor([q["y"]], dtype=torch.float64))
        want = metrics.loc[t, ["train_loss", "train_acc", "test_loss", "test_acc"]].tolist()
        assert got[0].tolist() == pytest.approx(want, rel=1e-5, abs=1e-7)
    # the default point is the one farthest from the straight line
    assert plane_run.info["p"][1] == pytest.approx(max(q["y"] for q in plane_run.info["projected"]))


def test_the_grid_agrees_with_an_independent_plain_pytorch_evaluation(run):
    landscape = compute_landscape(run, grid=7)
    info = landscape.info
    files = [run.info["start"]["path"], run.info["end"]["path"],
             run.path / "points" / f"{info['point_tick']:06d}.safetensors"]
    a, b, p = (load_file(str(f)) for f in files)
    names = [n for n, _ in build_model("mlp", **run.info["start"]["meta"]["model_kwargs"]).named_parameters()]
    flat = [torch.cat([s[n].double().flatten() for n in names]) for s in (a, b, p)]
    u = flat[1] - flat[0]
    w = (flat[2] - flat[0]) - ((flat[2] - flat[0]) @ u) / (u @ u) * u
    v = w / w.norm()
    assert info["scale"] == pytest.approx(float(u.norm()), rel=1e-6)
    model = build_model("mlp", **run.info["start"]["meta"]["model_kwargs"]).eval()
    data = {split: load_dataset("digits", split) for split in ("train", "test")}
    batches = {split: d.batch(torch.arange(len(d))) for split, d in data.items()}  # eval_samples 0: all
    rows = landscape.grid.sample(8, random_state=random.Random(3).randrange(1000))
    for row in rows.itertuples():
        theta = flat[0] + row.x * u + row.y * u.norm() * v
        state, i = dict(a), 0
        for n in names:
            k = a[n].numel()
            state[n] = theta[i:i + k].view(a[n].shape).float()
            i += k
        model.load_state_dict(state)
        for split, (x, y) in batches.items():
            with torch.no_grad():
                out = model(x)
            loss, acc = F.cross_entropy(out, y).item(), (out.argmax(1) == y).float().mean().item()
            assert getattr(row, f"{split}_loss") == pytest.approx(loss, abs=1e-4, rel=1e-3)
            assert getattr(row, f"{split}_acc") == pytest.approx(acc, abs=1e-4, rel=1e-3)


def test_projections_of_another_run_on_the_same_pair(run):
    plane = run_plane(run, 20)
    rows = project_run(plane, run)
    assert [r["tick"] for r in rows] == [0, 10, 20, 30]
    assert rows[2]["residual_rel"] < 1e-6 and all(r["residual_rel"] >= 0 for r in rows)


def test_an_interrupted_grid_continues_where_it_stopped(run, tmp_path):
    copy = tmp_path / "r"
    shutil.copytree(run.path, copy, ignore=shutil.ignore_patterns("landscape"))
    r = load_run(copy)

    class StopAfter:  # a stop request after the first chunk, as the dashboard's Stop button sends it
        def __init__(self):
            self.calls = 0

        def is_set(self):
            self.calls += 1
            return self.calls > 1

    partial = compute_landscape(r, point=10, grid=9, stop_event=StopAfter())
    assert 0 < len(partial.grid) < 81 and not partial.complete
    done = len(partial.grid)
    with open(partial.path / "grid.csv", "a") as f:
        f.write("0.1,0.2,0.3")  # a torn last line, as a kill mid-write leaves it
    seen = []
    full = compute_landscape(r, point=10, grid=9, on_progress=lambda d, t: seen.append(d))
    assert seen[0] == done and full.complete and len(full.grid) == 81
    fresh = compute_landscape(load_run(run.path), point=10, grid=9)
    assert full.grid.equals(fresh.grid)


@pytest.mark.parametrize("args, message", [
    (["--point", "7"], "no saved point at tick 7"),
    (["--grid", "2"], "--grid must be between 3 and 201"),
    (["--grid", "202"], "--grid must be between 3 and 201"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(run, args, message):
    before = sorted(p for p in run.path.rglob("*"))
    proc = run_cli("landscape", run.path, *args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and message in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p for p in run.path.rglob("*")) == before


def test_an_m2o_run_has_no_plane(digits_modes, tmp_path):
    cfg = replace(load_preset("mlp-digits-m2o"), ticks=2, device="cpu")
    out = tmp_path / "m2o"
    run_search(digits_modes[0], None, cfg, out)
    before = sorted(p.name for p in out.iterdir())
    proc = run_cli("landscape", out)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no end mode" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == before


def test_the_cli_writes_grid_and_plane(run):
    proc = run_cli("landscape", run.path, "--grid", "3", "--point", "30", "--quiet", check=True)
    folder = plane_dir(run, 30)
    info = json.loads((folder / "plane.json").read_text())
    assert info["grid"] == 3 and info["point_tick"] == 30 and str(folder) in proc.stdout
    assert (folder / "grid.csv").read_text().splitlines()[0] == "x,y,train_loss,train_acc,test_loss,test_acc"
    assert len((folder / "grid.csv").read_text().splitlines()) == 10
