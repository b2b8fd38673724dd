"""The CLI's commands on real files: demo, check, inspect, independence, presets, connect --resume."""
import re

import pytest

from llpf_core import load_run
from llpf_core.cli import main
from tests.conftest import run_cli


@pytest.mark.slow
def test_demo_prints_the_barrier_and_the_path_maximum(tmp_path):
    proc = run_cli("demo", "--out", tmp_path / "demo", "--quiet", check=True)
    barrier = float(re.search(r"barrier \(straight line\)\s+([\d.e-]+)", proc.stdout).group(1))
    path_max = float(re.search(r"path max train loss\s+([\d.e-]+)", proc.stdout).group(1))
    assert path_max <= barrier / 5 and path_max <= 0.05
    run = load_run(tmp_path / "demo" / "run")
    assert run.status == "finished" and run.info["summary"]["final_distance_rel"] <= 0.02


@pytest.fixture(scope="module")
def finished_run(digits_modes, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    a, b = (str(m.path) for m in digits_modes)
    assert main(["connect", a, b, "--out", str(out), "--quiet", "--set", "ticks=20", "--set", "save_every=5"]) == 0
    return out


def test_connect_prints_a_summary_and_resume_of_a_finished_run_is_a_no_op(finished_run, digits_modes, capsys):
    a, b = (str(m.path) for m in digits_modes)
    assert main(["connect", a, b, "--out", str(finished_run), "--quiet", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "finished" in out and "barrier (straight line)" in out
    assert len(load_run(finished_run).metrics) == 21


def test_check_recomputes_baseline_and_continuity(finished_run, capsys):
    assert main(["check", str(finished_run), "--baseline", "--continuity"]) == 0
    out = capsys.readouterr().out
    assert "barrier (max train loss)" in out and "continuity between 4 consecutive saved points" in out
    continuity = (finished_run / "continuity_saved_points.csv").read_text().splitlines()
    assert continuity[0] == "tick,alpha,loss,acc" and len(continuity) == 1 + 4 * 9
    assert len(load_run(finished_run).baseline) == 11


def test_inspect_a_run_and_a_mode(finished_run, digits_modes, capsys):
    assert main(["inspect", str(finished_run)]) == 0
    assert "20 ticks" in capsys.readouterr().out
    assert main(["inspect", str(digits_modes[0].path)]) == 0
    out = capsys.readouterr().out
    assert "mode/1" in out and "digits" in out and "test_acc" in out


def test_independence_verdicts(digits_modes, capsys):
    a, b = (str(m.path) for m in digits_modes)
    assert main(["independence", a, b]) == 0
    out = capsys.readouterr().out
    assert "independent: mean |cos|" in out and "NOT" not in out
    assert main(["independence", a, a]) == 0
    assert "NOT independent" in capsys.readouterr().out


def test_presets_lists_every_preset_and_recipe(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in ("mlp-digits-m2m", "mlp-digits-m2o", "lenet5-fashion-mnist-m2m", "lenet5-mnist-m2m-paper",
                 "lenet5-mnist-m2o-paper", "mlp-digits", "lenet5-mnist-paper"):
        assert name in out


def test_out_of_memory_in_train_is_one_line(monkeypatch, tmp_path, capsys):
    import torch

    import llpf_core.commands

    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(llpf_core.commands, "train_mode", no_memory)
    assert main(["train", "--model", "mlp", "--seed", "1", "--out", str(tmp_path / "m.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: out of memory: lower the batch size") and err.count("\n") == 1


def test_a_run_started_with_relative_mode_paths_works_from_another_directory(digits_modes, tmp_path, monkeypatch,
                                                                              capsys):
    import shutil
    (tmp_path / "ws" / "modes").mkdir(parents=True)
    for i, m in enumerate(digits_modes):
        shutil.copy(m.path, tmp_path / "ws" / "modes" / f"m{i}.safetensors")
    monkeypatch.chdir(tmp_path / "ws")
    assert main(["connect", "modes/m0.safetensors", "modes/m1.safetensors", "--out", "runs/rel", "--quiet",
                 "--set", "ticks=6", "--set", "save_every=3"]) == 0
    monkeypatch.chdir(tmp_path)
    run = load_run(tmp_path / "ws" / "runs" / "rel")
    assert run.info["start"]["path"] == str(tmp_path / "ws" / "modes" / "m0.safetensors")
    assert main(["landscape", str(run.path), "--grid", "3", "--quiet"]) == 0
    assert main(["check", str(run.path), "--baseline"]) == 0
    assert "barrier" in capsys.readouterr().out
