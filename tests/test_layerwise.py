"""Layer-wise connectivity: the endpoints and the straight line's midpoint against independent evaluations,
the issue's digits MLP table, BatchNorm buffers moving with their layer, the zoo's models on real data, a
plugin model on a user folder, and bad input (one line, exit 2, nothing written)."""
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest
import torch
from conftest import run_cli
from safetensors.torch import save_file
from torch import nn
from torchvision.io import write_png

from llpf_core import (
    ModeMeta,
    compute_layerwise,
    load_dataset,
    load_layerwise,
    load_mode,
    load_preset,
    run_search,
    save_mode,
)
from llpf_core.evaluate import Evaluator
from llpf_core.layerwise import COLUMNS, SUMMARY_COLUMNS, MixEvaluator, cumulative_names, parameter_layers
from llpf_core.registry import build_model
from llpf_core.train import default_recipe, load_recipe, train_mode

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")  # write_png
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
METRICS = ["train_loss", "train_acc", "test_loss", "test_acc"]


def untrained_modes(root, model: str, dataset: str, seeds=(1, 2), data_root=None):
    """Two freshly initialised modes: enough for shape and one-pass checks (the values are not the point)."""
    kwargs = load_dataset(dataset, "test", data_root).model_kwargs()
    paths = []
    for seed in seeds:
        torch.manual_seed(seed)
        path = root / f"{model}-{seed}.safetensors"
        net = build_model(model, **kwargs)
        for m in net.modules():  # statistics of their own, as trained modes have
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
        save_mode(path, net, ModeMeta(model, kwargs, dataset, seed))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def issue_modes(tmp_path_factory):
    """The issue's pair: digits MLPs of seeds 808 and 909, trained with the default digits recipe."""
    root = tmp_path_factory.mktemp("issue")
    name = default_recipe("mlp", "digits")
    return [train_mode("mlp", "digits", seed, root / f"mlp-{seed}.safetensors", load_recipe(name), "cpu",
                       recipe_name=name).path for seed in (808, 909)]


@pytest.fixture(scope="module")
def issue_table(issue_modes, tmp_path_factory):
    return compute_layerwise(*issue_modes, tmp_path_factory.mktemp("lw") / "out")


def _row(result, layer, base, alpha):
    t = result.table
    return t[(t["layer"] == layer) & (t["base"] == base) & (t["alpha"] == alpha)].iloc[0]


def test_the_issue_s_digits_mlp_table_is_reproduced(issue_table):
    r = issue_table
    assert r.layers == ["layers.0", "layers.1", "head"]  # data-flow order
    at_half = {(layer, base): _row(r, layer, base, 0.5)["train_loss"]
               for layer in r.layers for base in "AB"}
    # the issue: layers.0 alone 0.24, layers.1 alone 0.04, head alone 0.21 from A's side and 0.04 from B's
    assert at_half["layers.0", "A"] == pytest.approx(0.24, abs=0.06)
    assert at_half["layers.1", "A"] == pytest.approx(0.04, abs=0.03)
    assert at_half["head", "A"] == pytest.approx(0.21, abs=0.06)
    assert at_half["head", "B"] == pytest.approx(0.04, abs=0.03)
    # the barrier sits mostly in the first layer, and the side matters for the head
    assert at_half["layers.0", "A"] > 3 * at_half["layers.1", "A"]
    assert at_half["head", "A"] > 3 * at_half["head", "B"]
    assert _row(r, "all", "A", 0.5)["train_loss"] == pytest.approx(0.33, abs=0.06)  # the straight line's peak


def test_every_row_starts_at_a_and_ends_at_b_from_its_side(issue_table, issue_modes):
    r = issue_table
    t = r.table
    assert list(t.columns) == COLUMNS and list(r.summary.columns) == SUMMARY_COLUMNS
    # an independent evaluation of the two modes, loaded as they are
    a, b = (load_mode(p) for p in issue_modes)
    cfg = load_preset("mlp-digits-m2m")
    ev = Evaluator(build_model("mlp", **a.meta.model_kwargs), load_dataset("digits", "train"),
                   load_dataset("digits", "test"), cfg.eval_samples, cfg.seed, cfg.bn_recal_batches,
                   cfg.train.batch_size)
    for mode, base, alpha in ((a, "A", 0.0), (b, "B", 1.0)):
        want = ev.evaluate(mode.model.state_dict())
        rows = t[(t["base"] == base) & (t["alpha"] == alpha)]
        assert set(rows["layer"]) == {g["name"] for g in r.info["groups"]}
        for metric in METRICS:
            assert rows[metric].tolist() == pytest.approx([want[metric]] * len(rows), rel=1e-5, abs=1e-7)
            assert r.info[base][metric] == pytest.approx(want[metric], rel=1e-5, abs=1e-7)
    # the groups: single layers, first-k and last-k for 1 < k < n, all; the curves name their rows
    assert [g["name"] for g in r.info["groups"]] == ["layers.0", "layers.1", "head", "layers.0+layers.1",
                                                      "layers.1+head", "all"]
    assert cumulative_names(r.layers, "first") == ["layers.0", "layers.0+layers.1", "all"]
    assert cumulative_names(r.layers, "last") == ["head", "layers.1+head", "all"]
    assert len(t) == 6 * 2 * 5
    # each distinct state once: a row's alpha 0 from A's side is A, and A with a group from B is B with the
    # other layers from A (the MLP has no tensors outside its layers)
    members = {g: set(r.layers if g == "all" else g.split("+")) for g in set(t["layer"])}
    states = {tuple(a if n in members[g] else (base == "B") * 1.0 for n in r.layers)
              for g, base, a in zip(t["layer"], t["base"], t["alpha"])}
    assert r.info["evaluations"] == len(states) == 41
    # the summary's barrier is the row's largest excess over the line between A's and B's losses
    s = r.summary.set_index("layer")
    side = t[(t["layer"] == "layers.0") & (t["base"] == "A")]
    loss, alpha = side["train_loss"], side["alpha"]
    excess = loss - (1 - alpha) * r.info["A"]["train_loss"] - alpha * r.info["B"]["train_loss"]
    assert s.loc["layers.0", "train_barrier_A"] == pytest.approx(excess.max())
    own = loss - (1 - alpha) * loss.iloc[0] - alpha * loss.iloc[-1]
    assert s.loc["layers.0", "train_barrier_A_ends"] == pytest.approx(own.max())
    assert load_layerwise(r.path).table.equals(t)


def _baseline_midpoint_check(start, end, tmp_path, preset, **overrides):
    cfg = replace(load_preset(preset), ticks=1, save_every=1, device="cpu", baseline_points=3, **overrides)
    run = run_search(start, end, cfg, tmp_path / "run")
    result = compute_layerwise(run, alphas=(0, 0.5, 1))
    assert result.path == run.path / "layerwise"
    mid = run.baseline.set_index("alpha").loc[0.5]
    for base in "AB":
        row = _row(result, "all", base, 0.5)
        for metric in METRICS:
            assert row[metric] == pytest.approx(mid[metric], rel=1e-5, abs=1e-6), (base, metric)
    return result


def test_the_whole_model_at_one_half_is_the_baseline_s_midpoint(issue_modes, tmp_path):
    result = _baseline_midpoint_check(*issue_modes, tmp_path, "mlp-digits-m2m")
    assert result.info["batched"]  # a fully connected model: one vmap over the states


def test_batchnorm_buffers_move_with_their_layer_on_the_cnn(tmp_path):
    a, b = untrained_modes(tmp_path, "cnn", "digits")
    result = _baseline_midpoint_check(a, b, tmp_path, "cnn-digits-m2m", eval_samples=300, bn_recal_batches=2)
    assert not result.info["batched"]  # BatchNorm: statistics recomputed per state
    model = load_mode(a).model
    layers = parameter_layers(model)
    bns = [i for i, (name, _) in enumerate(layers) if isinstance(model.get_submodule(name), nn.BatchNorm2d)]
    assert bns, "the cnn has BatchNorm layers"
    i = bns[0]
    name, tensors = layers[i]
    assert {f"{name}.running_mean", f"{name}.running_var", f"{name}.weight", f"{name}.bias"} <= set(tensors)
    assert result.info["tensors"][name] == tensors
    cfg = replace(load_preset("cnn-digits-m2m"), eval_samples=50)
    engine = MixEvaluator(load_mode(a), load_mode(b), layers, cfg, None, "cpu", None)
    mix = tuple(0.5 if j == i else 0.0 for j in range(len(layers))) + ((0.0,) if engine.rest else ())
    state = engine.state(mix)
    for k in state:
        want = torch.lerp(engine.a[k], engine.b[k], 0.5) if k in tensors and state[k].is_floating_point() \
            else engine.a[k]
        assert torch.equal(state[k], want), k
    for buffer in ("running_mean", "running_var"):  # moved: halfway, neither A's nor B's
        k = f"{name}.{buffer}"
        assert not torch.equal(state[k], engine.a[k]) and not torch.equal(state[k], engine.b[k])


def test_lenet5_on_fashion_mnist_runs(tmp_path):
    a, b = untrained_modes(tmp_path, "lenet5", "fashion-mnist", data_root=tmp_path)
    seen = []
    r = compute_layerwise(a, b, tmp_path / "out", samples=200, data_root=tmp_path,
                          on_progress=lambda done, total: seen.append((done, total)))
    assert r.layers == ["conv1", "conv2", "fc1", "fc2", "fc3"]
    assert len(r.summary) == 5 + 3 + 3 + 1 and len(r.table) == len(r.summary) * 2 * 5
    assert r.table[METRICS].notna().all().all() and r.info["samples"]["train"] == 200
    assert seen[0][0] == 0 and seen[-1][0] == seen[-1][1] == r.info["evaluations"] < len(r.table)


def test_resnet18_on_synthetic_data_runs_one_pass(tmp_path):
    a, b = untrained_modes(tmp_path, "resnet18", "synthetic")
    layers = [n for n, _ in parameter_layers(load_mode(a).model)]
    assert layers[:2] == ["conv1", "bn1"] and layers[-1] == "fc" and len(layers) == 41
    cfg = replace(load_preset("resnet18-cifar10-m2m-fdf"), bn_recal_batches=1,
                  train=replace(load_preset("resnet18-cifar10-m2m-fdf").train, batch_size=16))
    r = compute_layerwise(a, b, tmp_path / "out", alphas=(0, 0.5, 1), layers=["layer4.1.bn2", "fc"], config=cfg,
                          samples=16)
    assert list(r.summary["layer"]) == ["layer4.1.bn2", "fc", "all"] and len(r.table) == 3 * 2 * 3
    assert r.table[METRICS].notna().all().all() and r.layers == layers


def test_a_plugin_model_on_a_user_folder_through_the_cli(tmp_path):
    plugin = tmp_path / "tiny.py"
    plugin.write_text("from torch import nn\nfrom llpf_core import register_model\n\n\n@register_model\n"
                      "def tinynet(*, num_classes, in_channels, image_size):\n"
                      "    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size ** 2, 16),\n"
                      "                         nn.ReLU(), nn.Linear(16, num_classes))\n")
    g = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for c in range(3):
            (tmp_path / "data" / split / f"c{c}").mkdir(parents=True)
            for i in range(6):
                write_png(torch.randint(0, 256, (1, 8, 8), generator=g, dtype=torch.uint8),
                          str(tmp_path / "data" / split / f"c{c}" / f"{i}.png"))
    modes = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 3))
        save_file(net.state_dict(), str(tmp_path / f"s{seed}.safetensors"))
        modes.append(tmp_path / f"m{seed}.safetensors")

    def import_state(seed, mode):
        run_cli("import", tmp_path / f"s{seed}.safetensors", "--model", "tinynet", "--dataset",
                f"folder:{tmp_path / 'data'}", "--out", mode, "--plugin", plugin, "--quiet", env=ENV, check=True)

    with ThreadPoolExecutor(2) as pool:  # the two imports side by side, one core each
        list(pool.map(import_state, (1, 2), modes))
    proc = run_cli("layerwise", *modes, "--out", tmp_path / "out", "--plugin", plugin, "--alphas", "0,0.5,1",
                   "--quiet", env=ENV, check=True)
    r = load_layerwise(tmp_path / "out")
    assert r.layers == ["1", "3"] and "-> " in proc.stdout and len(r.table) == 3 * 2 * 3  # 1, 3 and all


def test_a_run_s_endpoints_through_the_cli(issue_modes, tmp_path):
    cfg = replace(load_preset("mlp-digits-m2m"), ticks=1, save_every=1, device="cpu", baseline_points=0)
    run = run_search(*issue_modes, cfg, tmp_path / "run")
    proc = run_cli("layerwise", run.path, "--layers", "head", "--quiet", env=ENV, check=True)
    r = load_layerwise(run.path)
    assert r.path == run.path / "layerwise" and list(r.summary["layer"]) == ["head", "all"]
    assert "head" in proc.stdout


def test_a_stop_writes_nothing(issue_modes, tmp_path):
    stop = threading.Event()
    stop.set()
    assert compute_layerwise(*issue_modes, tmp_path / "out", stop_event=stop) is None
    assert not (tmp_path / "out").exists()


def _one_line_error(proc, needle):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr


@pytest.mark.parametrize("case, needle", [
    ("architecture", "different architectures"),
    ("dataset", "different datasets"),
    ("layer", "no layer named 'layers.7'"),
    ("alphas", "--alphas"),
    ("no-out", "--out"),
    ("three", "START END or RUN"),
    ("samples", "--samples"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(issue_modes, tmp_path, case, needle):
    a, b = issue_modes
    if case == "architecture":
        b = untrained_modes(tmp_path, "cnn", "digits")[0]
    if case == "dataset":  # the same network, recorded as trained on other (8x8 grey) images
        mode = load_mode(b)
        b = tmp_path / "other-data.safetensors"
        save_mode(b, mode.model, replace(mode.meta, dataset=f"folder:{tmp_path}"))
    out = tmp_path / "out"
    extra = {"layer": ["--layers", "head", "layers.7"], "alphas": ["--alphas", "0,1.5"],
             "samples": ["--samples", "-3"]}.get(case, [])
    paths = {"no-out": [a, b], "three": [a, b, a]}.get(case)
    args = [*(paths or [a, b]), *([] if case == "no-out" else ["--out", out]), *extra]
    _one_line_error(run_cli("layerwise", *args, "--quiet", env=ENV), needle)
    assert not out.exists()


def test_an_m2o_run_has_no_pair(issue_modes, tmp_path):
    cfg = replace(load_preset("mlp-digits-m2o"), ticks=1, save_every=1, device="cpu")
    run = run_search(issue_modes[0], "origin", cfg, tmp_path / "m2o")
    _one_line_error(run_cli("layerwise", run.path, "--quiet", env=ENV), "no end mode")
    assert not (run.path / "layerwise").exists()
