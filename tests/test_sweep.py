"""Sweeps (issue 17): pairs as Ray tasks on a local Ray started here (2 CPUs, one logical GPU, no dashboard)."""
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import ray
import torch

from llpf_core import load_run, run_search
from llpf_core.plugins import load_plugin
from llpf_core.sweep import _options, pair_config, plan_sweep, read_sweep, run_sweep
from tests.conftest import REPO, checkpoint_tick, run_cli

FAST = ["ticks=20", "checkpoint_every=5", "save_every=10"]


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, object_store_memory=80 * 1024 * 1024,
             log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


def ticks(run_dir) -> list[int]:
    return pd.read_csv(run_dir / "metrics.csv")["tick"].tolist()


def test_three_pairs_with_two_workers_equal_each_search_run_alone(tmp_path):
    spec = plan_sweep("mlp", "digits", 3, 1, overrides=FAST, recipe="mlp-digits")
    result = run_sweep(tmp_path / "sw", spec, workers=2)
    assert result.exit_code == 0 and [p["status"] for p in result.pairs] == ["finished"] * 3
    summary = pd.read_csv(tmp_path / "sw" / "summary.csv")
    assert summary["run"].tolist() == ["seed1-seed2", "seed3-seed4", "seed5-seed6"]
    torch.set_num_threads(1)
    for p in result.pairs:
        alone = run_search(p["start"], p["end"], pair_config(spec, p["name"]), tmp_path / p["name"])
        swept = load_run(tmp_path / "sw" / p["run"])
        pd.testing.assert_frame_equal(swept.metrics.drop(columns="wall_s"), alone.metrics.drop(columns="wall_s"),
                                      rtol=1e-5)
        assert summary.set_index("run").loc[p["name"], "barrier"] == pytest.approx(alone.info["summary"]["barrier"])


def test_a_killed_worker_is_retried_and_resumes_its_pair_while_a_failing_pair_is_reported(tmp_path):
    # The fault comes from a test plugin, which the sweep loads in its workers as it does any plugin: the
    # worker running seed1-seed2 SIGKILLs itself once at tick 13, after the tick-10 checkpoint.
    load_plugin(str(REPO / "tests" / "plugins" / "kill_worker_once.py"))
    (tmp_path / "sw" / "runs" / "seed1-seed2").mkdir(parents=True)
    (tmp_path / "sw" / "runs" / "seed1-seed2" / ".kill-at").write_text("13")
    spec = plan_sweep("mlp", "digits", 2, 1, overrides=FAST, recipe="mlp-digits",
                      pair_overrides={"seed3-seed4": ["train.lr=1e6"]})
    result = run_sweep(tmp_path / "sw", spec, workers=2)
    assert result.exit_code == 1
    killed, failing = result.pairs
    run = tmp_path / "sw" / "runs" / "seed1-seed2"
    assert killed["status"] == "finished" and (run / ".killed").exists()
    assert ticks(run) == list(range(21))  # every tick once: resumed from the checkpoint, not restarted
    assert failing["status"] == "failed" and "diverged" in failing["error"]
    row = pd.read_csv(tmp_path / "sw" / "summary.csv").set_index("run").loc["seed3-seed4"]
    assert row["status"] == "failed" and "diverged" in row["error"]


def test_four_quarter_gpu_paths_run_at_once_and_no_fifth(tmp_path):
    def hold(i: int, folder: str) -> None:
        from pathlib import Path
        Path(folder, f"start{i}").touch()
        while not Path(folder, "release").exists():
            time.sleep(0.05)

    task = ray.remote(hold).options(**{**_options(0.25, 0.25), "max_retries": 0})  # CPUs to spare: the GPU limits
    refs = [task.remote(i, str(tmp_path)) for i in range(5)]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("start*"))) < 4:
        assert time.monotonic() < deadline, "four quarter-GPU tasks did not start together"
        time.sleep(0.05)
    while ray.available_resources().get("GPU", 0) > 0:  # the cluster's view of its resources lags a little
        assert time.monotonic() < deadline, "the four tasks do not hold the whole GPU"
        time.sleep(0.05)
    # The one logical GPU is full, so the fifth cannot be placed while the four hold it.
    assert len(list(tmp_path.glob("start*"))) == 4
    (tmp_path / "release").touch()
    ray.get(refs, timeout=120)
    assert len(list(tmp_path.glob("start*"))) == 5


def test_an_interrupted_cli_sweep_continues_with_resume_and_refuses_a_changed_search(tmp_path):
    out = tmp_path / "sw"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "llpf_core", "sweep", "--model", "mlp", "--pairs", "1",
                             "--out", out, "--workers", "1", "--set", "ticks=3000", "--set", "checkpoint_every=5",
                             "--quiet"], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    run = out / "runs" / "seed1-seed2"
    deadline = time.monotonic() + 240
    while checkpoint_tick(run) < 10:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "slow"
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    info = read_sweep(out)
    assert info["status"] == "interrupted" and info["pairs"][0]["status"] == "interrupted"
    stopped_at = checkpoint_tick(run)
    before = (out / "sweep.json").read_bytes()
    changed = run_cli("sweep", "--out", out, "--resume", "--set", "ticks=99", "--preset", "mlp-digits-m2m", env=env)
    assert changed.returncode == 2 and changed.stderr.count("\n") == 1, changed.stderr
    assert "drop --preset, --set" in changed.stderr and (out / "sweep.json").read_bytes() == before
    done = run_cli("sweep", "--out", out, "--resume", "--quiet", env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert read_sweep(out)["pairs"][0]["status"] == "finished"
    assert ticks(run) == list(range(3001)) and stopped_at < 3000


@pytest.mark.parametrize("args, message", [
    (["--model", "mlp", "--pairs", "0"], "--pairs must be at least 1"),
    (["--model", "mlp", "--pairs", "1", "--ray-address", "127.0.0.1:1"], "cannot reach the Ray cluster"),
])
def test_bad_sweep_input_is_one_line_and_writes_nothing(tmp_path, args, message):
    proc = run_cli("sweep", "--out", tmp_path / "sw", *args)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "sw").exists()


def test_a_folder_holding_another_sweep_or_another_models_modes_is_refused(tmp_path):
    out = tmp_path / "sw"
    spec = plan_sweep("mlp", "digits", 1, 1, overrides=["ticks=2"], recipe="mlp-digits")
    assert run_sweep(out, spec).exit_code == 0
    other = run_cli("sweep", "--out", out, "--model", "mlp", "--pairs", "2")
    assert other.returncode == 2 and "holds a different sweep" in other.stderr and other.stderr.count("\n") == 1
    os.rename(out / "sweep.json", tmp_path / "moved.json")  # modes/ stays: seeds 1, 2 are mlp modes
    clash = run_cli("sweep", "--out", out, "--model", "lenet5", "--pairs", "1")
    assert clash.returncode == 2 and "is a mlp/digits mode of seed 1" in clash.stderr, clash.stderr
    assert clash.stderr.count("\n") == 1


def test_a_sweep_runs_bezier_on_every_pair(tmp_path, digits_modes):
    modes = [str(m.path) for m in digits_modes]
    spec = plan_sweep(None, "digits", None, modes=modes, algorithm="bezier",
                      overrides=["curve.steps=30", "curve.points=5"])
    result = run_sweep(tmp_path / "sw", spec, workers=2)
    assert result.exit_code == 0, result.pairs
    summary = pd.read_csv(tmp_path / "sw" / "summary.csv")
    assert summary[["run", "algorithm", "status"]].values.tolist() == [["seed1-seed2", "bezier", "finished"]]
    run = load_run(tmp_path / "sw" / "runs" / "seed1-seed2")
    assert run.info["summary"]["sgd_steps"] == 30 and list(run.metrics["tick"]) == [0, 1, 2, 3, 4]
    assert summary["barrier"].iloc[0] == pytest.approx(run.info["summary"]["barrier"])


def test_a_cli_sweep_of_several_methods_has_one_row_per_pair_and_method(tmp_path, digits_modes):
    out = tmp_path / "sw"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    run_cli("sweep", "--out", out, "--modes", *[m.path for m in digits_modes], "--algorithm", "linear,rebasin,m2m",
            "--set", "ticks=20", "--set", "curve.points=5", "--workers", "2", "--quiet", env=env, check=True)
    summary = pd.read_csv(out / "summary.csv")
    assert summary[["run", "algorithm", "status"]].values.tolist() == [
        ["seed1-seed2-linear", "linear", "finished"], ["seed1-seed2-rebasin", "rebasin", "finished"],
        ["seed1-seed2-m2m", "m2m", "finished"]]
    for name, points in (("linear", 5), ("rebasin", 5), ("m2m", 21)):
        run = load_run(out / "runs" / f"seed1-seed2-{name}")
        assert run.info["algorithm"] == name and len(run.metrics) == points and len(run.path_table)
    # rebasin's path beats the straight line's barrier, which every method on the pair shares
    barrier = summary["barrier"].iloc[0]
    assert (summary["barrier"] == barrier).all()
    assert summary.set_index("algorithm").loc["rebasin", "path_max_train_loss"] < barrier / 2


def test_an_unknown_method_in_a_sweep_is_one_line_and_writes_nothing(tmp_path):
    proc = run_cli("sweep", "--out", tmp_path / "sw", "--model", "mlp", "--pairs", "1", "--algorithm", "linear,m3m")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "unknown algorithm 'm3m'" in proc.stderr
    assert not (tmp_path / "sw").exists()


def test_a_plugin_method_runs_in_the_sweeps_workers(tmp_path, digits_modes):
    load_plugin(str(REPO / "examples" / "polychain.py"))  # as `sweep --plugin examples/polychain.py` does
    spec = plan_sweep(None, "digits", None, modes=[str(m.path) for m in digits_modes], algorithm="polychain,linear",
                      overrides=["polychain.steps=40", "polychain.points=5", "curve.points=5"])
    result = run_sweep(tmp_path / "sw", spec, workers=2)
    assert result.exit_code == 0, result.pairs
    summary = pd.read_csv(tmp_path / "sw" / "summary.csv")
    assert summary[["run", "algorithm", "status"]].values.tolist() == [
        ["seed1-seed2-polychain", "polychain", "finished"], ["seed1-seed2-linear", "linear", "finished"]]
    run = load_run(tmp_path / "sw" / "runs" / "seed1-seed2-polychain")
    assert run.info["summary"]["sgd_steps"] == 40 and len(run.path_table) == 5
