"""Batched LLPF (llpf_core/batched.py): pairs advanced in lockstep are valid paths of their own pairs, as
close to the same pair searched alone as that run's spread over seeds; a batched sweep killed mid-batch
resumes every pair, each tick once."""
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch

from llpf_core import Pair, load_run, resolve_config, run_batched, run_search
from llpf_core.checks import run_summary
from llpf_core.train import load_recipe, train_mode
from tests.conftest import REPO, checkpoint_tick

# A shorter M2M than the preset's (60 ticks of 8% instead of 300 of 2%): it still ends within 1% of B.
SHORT = ["ticks=60", "phases.0.step_a=0.08"]


@pytest.fixture(scope="module")
def four_modes(tmp_path_factory, device):
    root = tmp_path_factory.mktemp("batched-modes")
    recipe = load_recipe("mlp-digits")
    return [train_mode("mlp", "digits", seed, root / f"mlp-seed{seed}.safetensors", recipe, str(device),
                       recipe_name="mlp-digits") for seed in (11, 12, 13, 14)]


def _config(device, seed):
    cfg = resolve_config("mlp", "digits", "m2m", overrides=SHORT).config
    return replace(cfg, seed=seed, device=str(device))


def test_batched_pairs_are_valid_paths_within_the_spread_of_single_runs(four_modes, tmp_path, device):
    pairs = [(four_modes[0], four_modes[1]), (four_modes[2], four_modes[3])]
    alone = {(p, seed): run_search(a, b, _config(device, seed), tmp_path / f"alone-{p}-{seed}")
             for p, (a, b) in enumerate(pairs) for seed in (7, 8, 9)}
    for seed in (7, 8):
        runs = run_batched([Pair(a, b, _config(device, seed), tmp_path / f"batched-{p}-{seed}")
                            for p, (a, b) in enumerate(pairs)])
        for p, ((a, b), run) in enumerate(zip(pairs, runs)):
            assert not isinstance(run, Exception), run
            assert run.status == "finished"
            m = run.metrics
            assert list(m["tick"]) == list(range(61))  # every tick once
            start = run.point(0).model.state_dict()
            for k, v in a.model.state_dict().items():
                assert torch.equal(start[k], v), k  # starts at A
            s = run_summary(run)
            assert s["final_distance_rel"] <= 0.02, s  # ends at B, within the preset's end tolerance
            assert s["path_max_train_loss"] <= 0.05 and s["path_max_train_loss"] <= s["barrier"] / 5, s
            spread = [run_summary(alone[p, q])["path_max_train_loss"] for q in (7, 8, 9)]
            assert min(spread) * 0.9 <= s["path_max_train_loss"] <= max(spread) * 1.1, (s, spread)
            # The same seed alone draws the same batches: the paths agree far inside the spread.
            same = alone[p, seed].metrics
            assert (m["distance_rel"] - same["distance_rel"]).abs().max() < 1e-3


def _sweep(out, modes, *extra):
    return [sys.executable, "-m", "llpf_core", "sweep", "--out", str(out), "--workers", "1", "--batch", "2",
            "--quiet", *extra] + ([] if "--resume" in extra else [
                "--modes", *[str(m.path) for m in modes], "--set", "ticks=150", "--set", "checkpoint_every=10",
                "--set", "continuity.every=1", "--set", "save_every=25", "--set", "phases.0.step_a=0.05"])


def test_a_batch_killed_mid_run_resumes_every_pair_each_tick_once(four_modes, tmp_path):
    out = tmp_path / "sweep"
    proc = subprocess.Popen(_sweep(out, four_modes), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    runs = [out / "runs" / name for name in ("seed11-seed12", "seed13-seed14")]
    deadline = time.time() + 300
    while min(checkpoint_tick(r) for r in runs) < 40:  # both pairs are mid-run, 110 ticks from their end
        assert time.time() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() else ""
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert [load_run(r).status for r in runs] == ["running", "running"]  # killed: nobody marked them
    resumed = subprocess.run(_sweep(out, four_modes, "--resume"), cwd=REPO, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    for r in runs:
        run = load_run(r)
        assert run.status == "finished"
        assert list(run.metrics["tick"]) == list(range(151))  # each tick once, none lost or repeated
        assert run_summary(run)["final_distance_rel"] <= 0.02


def test_a_batchnorm_model_runs_one_pair_after_another_with_one_note(tmp_path, device, capsys):
    from llpf_core import TrainRecipe
    from llpf_core.sweep import default_batch
    cnn = [train_mode("cnn", "digits", seed, tmp_path / f"cnn-seed{seed}.safetensors", TrainRecipe(epochs=1),
                      str(device)) for seed in (21, 22)]
    assert default_batch(cnn[0].path, gpu=False) == 1 and default_batch(cnn[0].path, gpu=True) == 1
    cfg = replace(resolve_config("cnn", "digits", "m2m", overrides=["ticks=3"]).config, device=str(device))
    capsys.readouterr()
    runs = run_batched([Pair(cnn[0], cnn[1], cfg, tmp_path / "ab"), Pair(cnn[1], cnn[0], cfg, tmp_path / "ba")])
    assert [r.status for r in runs] == ["finished", "finished"]
    assert [list(r.metrics["tick"]) for r in runs] == [[0, 1, 2, 3]] * 2
    note = capsys.readouterr().err.strip().splitlines()
    assert note == ["warning: running these 2 searches one after another, not batched: cnn cannot be stacked: "
                    "it has buffers (BatchNorm running statistics)"]


class _Gated(torch.nn.Module):
    """A forward that branches on its input's values, which torch.func.vmap refuses."""

    def __init__(self, features: int, num_classes: int):
        super().__init__()
        self.fc = torch.nn.Linear(features, num_classes)

    def forward(self, x):
        x = x.flatten(1)
        if x.sum() > 0:  # data-dependent control flow
            x = x * 1.0
        return self.fc(x)


def gated_linear(*, num_classes: int = 10, in_channels: int = 1, image_size: int = 8) -> torch.nn.Module:
    return _Gated(in_channels * image_size * image_size, num_classes)


def test_a_model_vmap_refuses_runs_one_pair_after_another_with_one_note(tmp_path, device, capsys, monkeypatch):
    from llpf_core import TrainRecipe, registry
    monkeypatch.setitem(registry._MODELS, "gated_linear", gated_linear)  # registered for this test only
    modes = [train_mode("gated_linear", "digits", seed, tmp_path / f"g{seed}.safetensors", TrainRecipe(epochs=1),
                        str(device)) for seed in (31, 32)]
    cfg = replace(resolve_config("gated_linear", "digits", "m2m", overrides=["ticks=3"]).config, device=str(device))
    capsys.readouterr()
    runs = run_batched([Pair(modes[0], modes[1], cfg, tmp_path / "ab"), Pair(modes[1], modes[0], cfg, tmp_path / "ba")])
    assert [r.status for r in runs] == ["finished", "finished"]
    note = capsys.readouterr().err.strip().splitlines()
    assert len(note) == 1 and note[0].startswith("warning: running these 2 searches one after another, not batched: "
                                                 "gated_linear cannot be stacked: its forward does not run under "
                                                 "torch.func.vmap"), note

