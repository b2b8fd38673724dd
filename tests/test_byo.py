"""Bring your own architecture and checkpoints: a plugin CNN the zoo lacks, trained by a plain PyTorch
loop, saved as a DataParallel state dict, imported and connected; and every hostile input of the
``import`` command and of plugins, each one line with exit code 2 and nothing written."""
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from conftest import run_cli
from llpf_core import build_model, load_dataset, load_run, run_summary

PLUGIN = '''
from torch import nn
from llpf_core import register_model


@register_model
def tinyconv(*, num_classes, in_channels):  # no image_size: the registry offers only what it takes
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, num_classes))
'''
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def _train_plainly(seed: int) -> dict[str, torch.Tensor]:
    """A user's own training script: Adam on the digits, then the DataParallel wrapper's state dict."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    train = load_dataset("digits", "train")
    x, y = train.batch(torch.arange(len(train)))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    for _ in range(15):
        for idx in torch.randperm(len(y), generator=g).split(64):
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return nn.DataParallel(net).state_dict()  # keys "module.0.weight", ...


@pytest.fixture(scope="module")
def byo(tmp_path_factory):
    """The plugin file and two state dicts trained by the user's own loop (seeds 1 and 2)."""
    root = tmp_path_factory.mktemp("byo")
    plugin = root / "my_models.py"
    plugin.write_text(PLUGIN)
    states = []
    for seed in (1, 2):
        state = _train_plainly(seed)
        assert all(k.startswith("module.") for k in state)
        states.append(root / f"user-seed{seed}.safetensors")
        save_file(state, states[-1])
    return root, plugin, states


def test_plugin_model_trained_elsewhere_imports_and_connects(byo):
    root, plugin, states = byo
    modes = [root / f"tiny{i}.safetensors" for i in (1, 2)]

    def import_state(state, mode):
        return run_cli("import", state, "--model", "tinyconv", "--dataset", "digits", "--out", mode,
                       "--plugin", plugin, env=ENV, check=True)

    with ThreadPoolExecutor(2) as pool:  # the two imports side by side, one core each
        for proc in pool.map(import_state, states, modes):
            assert "test loss" in proc.stdout
    proc = run_cli("inspect", modes[0], "--plugin", plugin, env=ENV, check=True)
    assert "imported" in proc.stdout and "sha256" in proc.stdout
    proc = run_cli("connect", modes[0], modes[1], "--out", root / "run", "--ticks", "60",
                   "--set", "phases.0.step_a=0.08", env={**ENV, "LLPF_PLUGINS": str(plugin)},
                   check=True)
    assert "(preset generic-m2m)" in proc.stderr  # no preset fits a plugin model: the generic one-phase M2M
    s = run_summary(load_run(root / "run"))
    assert s["path_max_train_loss"] < 0.5 * s["barrier"], s
    assert s["barrier"] > 0.1, s  # two independent CNNs: the straight line between them is a real barrier


def test_plugin_mode_loads_with_the_plugin_only(byo, tmp_path):
    root, plugin, states = byo
    mode = tmp_path / "m.safetensors"
    run_cli("import", states[0], "--model", "tinyconv", "--dataset", "digits", "--out", mode,
            "--plugin", plugin, env=ENV, check=True)
    api = ("import llpf_core, sys; m = llpf_core.load_mode(sys.argv[1]); "
           "print([g[0] for g in llpf_core.follow_data_flow(m.model)])")
    proc = subprocess.run([sys.executable, "-c", api, str(mode)], env={**ENV, "LLPF_PLUGINS": str(plugin)},
                          capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip() == "['0.weight', '2.weight', '6.weight']", proc.stderr
    _one_line_error(run_cli("inspect", mode, env=ENV), "tinyconv", str(plugin), "--plugin")
    _one_line_error(run_cli("connect", mode, mode, "--out", tmp_path / "run", env=ENV), str(plugin))
    assert not (tmp_path / "run").exists()


def _hostile_cases(root: Path, states: list[Path]) -> dict[str, tuple[list, list[str]]]:
    mlp = build_model("mlp", num_classes=10, in_channels=1, image_size=8).state_dict()
    wrong = {**mlp, "layers.1.weight": torch.zeros(64, 65)}
    save_file(wrong, root / "wrong-shape.safetensors")
    save_file({k: v for k, v in mlp.items() if k != "head.bias"}, root / "missing.safetensors")
    save_file({**mlp, "extra.weight": torch.zeros(3)}, root / "unexpected.safetensors")
    torch.save(mlp, root / "model.pt")
    torch.save(mlp, root / "pickle.safetensors")
    (root / "raises.py").write_text("raise RuntimeError('boom in the plugin')\n")
    (root / "clash.py").write_text("from llpf_core import register_model\n\n@register_model\ndef mlp():\n    pass\n")
    out = ["--out", root / "out.safetensors"]
    imp = ["import", "--model", "mlp", "--dataset", "digits", *out]
    return {
        "wrong_shape": ([*imp, root / "wrong-shape.safetensors"], ["layers.1.weight", "(64, 65)", "expects (64, 64)"]),
        "missing": ([*imp, root / "missing.safetensors"], ["missing head.bias"]),
        "unexpected": ([*imp, root / "unexpected.safetensors"], ["unexpected extra.weight"]),
        "pt_file": ([*imp, root / "model.pt"], ["pickle", "weights_only=True"]),
        "renamed_pickle": ([*imp, root / "pickle.safetensors"], ["not a valid safetensors", "pickle"]),
        "plugin_missing": ([*imp, states[0], "--plugin", root / "nope.py"], ["nope.py does not exist"]),
        "plugin_raises": ([*imp, states[0], "--plugin", root / "raises.py"], ["RuntimeError", "boom in the plugin"]),
        "plugin_clash": ([*imp, states[0], "--plugin", root / "clash.py"], ["'mlp'", "the zoo already has"]),
        "plugin_env_missing": (["presets"], ["absent.py does not exist"]),
        "bad_kwargs": ([*imp, root / "missing.safetensors", "--model-kwargs", "[1"], ["--model-kwargs"]),
    }


def test_hostile_inputs_are_one_line_and_write_nothing(byo, tmp_path):
    _, _, states = byo
    cases = _hostile_cases(tmp_path, states)
    before = sorted(p.name for p in tmp_path.iterdir())

    def run(item):
        name, (args, _) = item
        env = {**ENV, "LLPF_PLUGINS": str(tmp_path / "absent.py")} if name == "plugin_env_missing" else ENV
        return name, run_cli(*args, env=env)

    with ThreadPoolExecutor(2) as pool:
        results = dict(pool.map(run, cases.items()))
    for name, (_, needles) in cases.items():
        _one_line_error(results[name], *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_module_name_plugin_trains_and_takes_its_own_kwargs(tmp_path):
    (tmp_path / "my_zoo.py").write_text(
        "from torch import nn\nfrom llpf_core import register_model\n\n\n@register_model\n"
        "def widemlp(*, num_classes, in_channels, image_size, width=128):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size ** 2, width), nn.ReLU(),\n"
        "                         nn.Linear(width, num_classes))\n")
    env = {**ENV, "PYTHONPATH": str(tmp_path), "LLPF_PLUGINS": "my_zoo"}
    mode = tmp_path / "w.safetensors"
    run_cli("train", "--model", "widemlp", "--dataset", "digits", "--seed", 1, "--out", mode, "--epochs", 2,
            "--quiet", env=env, check=True)
    exported = tmp_path / "w-state.safetensors"
    from safetensors.torch import load_file
    save_file({f"_orig_mod.{k}": v for k, v in load_file(mode).items()}, exported)  # as torch.compile saves
    _one_line_error(run_cli("import", exported, "--model", "widemlp", "--dataset", "digits", "--out",
                            tmp_path / "i.safetensors", "--model-kwargs", '{"width": 64}', env=env),
                    "wrong shape 1.weight (128, 64), model expects (64, 64)")
    proc = run_cli("inspect", mode, env=env, check=True)
    assert "my_zoo" in proc.stdout  # the plugin is recorded (llpf.plugin)
