"""End-to-end searches on the embedded digits data: quality, M2O's exclusions, resume after SIGKILL."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from llpf_core import (
    Phase,
    SearchConfig,
    TrainSpec,
    apply_overrides,
    build_model,
    load_dataset,
    load_preset,
    load_run,
    run_search,
    save_mode,
)
from llpf_core.checks import run_summary
from llpf_core.modefile import ModeMeta, load_mode
from llpf_core.train import load_recipe, train_mode
from tests.conftest import REPO, checkpoint_tick


def assert_low_loss_path(run):
    s = run_summary(run)
    assert run.status == "finished"
    assert s["path_max_train_loss"] <= s["barrier"] / 5, s
    assert s["path_max_train_loss"] <= 0.05, s
    assert s["final_distance_rel"] <= 0.02, s
    return s


def test_demo_preset_connects_the_modes(digits_modes, tmp_path):
    run = run_search(*digits_modes, load_preset("mlp-digits-m2m"), tmp_path / "run")
    s = assert_low_loss_path(run)
    m = run.metrics
    assert list(m["tick"]) == list(range(301))
    assert s["barrier"] > 0.2  # the two modes really are separated by a barrier
    checked = m["tick"] % 10 == 0  # the preset checks continuity and evaluates every 10 ticks
    assert m.loc[checked, "continuity_max_loss"].iloc[1:].notna().all() and m.loc[~checked, "train_loss"].isna().all()
    assert (m["continuity_max_loss"].dropna() <= 0.05).all()
    assert len(run.baseline) == 11 and run.baseline["alpha"].tolist()[0] == 0
    points = [t for t, _ in run.points()]
    assert points[0] == 0 and points[-1] == 300 and 150 in points
    end = run.point(300)
    assert end.meta.format == "point/1" and end.meta.extra["llpf.tick"] == "300"
    layers = run.layers
    assert set(layers["layer"]) == set(dict(digits_modes[0].model.named_parameters()))
    assert len(run.continuity) == 30 * 9


@pytest.mark.slow
def test_fresh_seed_pair_connects_too(tmp_path):
    """Seeds no other test uses: the result is not tuned to one pair."""
    recipe = load_recipe("mlp-digits")
    a, b = (train_mode("mlp", "digits", s, tmp_path / f"{s}.safetensors", recipe, "cpu") for s in (71, 72))
    assert_low_loss_path(run_search(a, b, load_preset("mlp-digits-m2m"), tmp_path / "run"))


def test_m2o_never_moves_norm_layers(tmp_path):
    """M2O shrinks every layer but BatchNorm and LayerNorm ones (docs/algorithm.md, M2O)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.LayerNorm(32),
                                torch.nn.ReLU(), torch.nn.Linear(32, 10))
    cnn = build_model("cnn", num_classes=10, in_channels=1, image_size=8)
    # A throwaway registry entry for the LayerNorm model.
    from llpf_core.registry import _MODELS
    _MODELS.setdefault("test_ln_mlp", lambda **kw: _with_shape(
        torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.LayerNorm(32),
                            torch.nn.ReLU(), torch.nn.Linear(32, 10))))
    for name, net, norm_prefixes in (("test_ln_mlp", model, ["2."]), ("cnn", cnn, ["0.1.", "2.1.", "4.1."])):
        kwargs = {} if name == "test_ln_mlp" else {"num_classes": 10, "in_channels": 1, "image_size": 8}
        with torch.no_grad():  # non-trivial norm parameters, so that a shrink would show
            for n, p in net.named_parameters():
                if any(n.startswith(q) for q in norm_prefixes):
                    p.uniform_(0.5, 1.5)
        path = tmp_path / f"{name}.safetensors"
        save_mode(path, net, ModeMeta(model=name, model_kwargs=kwargs, dataset="digits"))
        cfg = SearchConfig(algorithm="m2o", ticks=5, phases=[Phase(step_a=0.1)],
                           train=TrainSpec(lr=1e-12, min_iters=1, max_iters=1), save_every=5,
                           continuity=dataclasses.replace(SearchConfig().continuity, points=0))
        run = run_search(path, "origin", cfg, tmp_path / f"run-{name}")
        start, end = load_file(path), load_file(run.points()[-1][1])
        for n, v in start.items():
            if n.endswith(("running_mean", "running_var", "num_batches_tracked")):
                continue  # buffers follow training's statistics, not the move
            if any(n.startswith(q) for q in norm_prefixes):
                assert torch.allclose(end[n], v, atol=1e-9), n
            else:
                assert torch.allclose(end[n], v * 0.9 ** 5, atol=1e-6), n


def _with_shape(model):
    model.input_shape = (1, 8, 8)
    return model


def _connect_args(modes, out):
    """150 ticks with continuity checked every tick (about 10 ms a tick here), checkpoints every 10."""
    return [sys.executable, "-m", "llpf_core", "connect", str(modes[0].path), str(modes[1].path),
            "--out", str(out), "--quiet", "--set", "ticks=150", "--set", "checkpoint_every=10",
            "--set", "save_every=25", "--set", "continuity.every=1", "--seed", "7"]


def _comparable(metrics: pd.DataFrame) -> pd.DataFrame:
    return metrics.drop(columns=["wall_s"])


def test_resume_after_sigkill_matches_an_uninterrupted_run(digits_modes, tmp_path):
    reference = tmp_path / "reference"  # the uninterrupted run, side by side with the killed one (2 cores)
    uninterrupted = subprocess.Popen(_connect_args(digits_modes, reference), cwd=REPO, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_connect_args(digits_modes, killed), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    # Kill at the checkpoint of tick 40: 110 ticks are left, so the run cannot finish first.
    while checkpoint_tick(killed) < 40:
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert load_run(killed).status == "running"  # killed: nobody marked it
    rows_before = len(load_run(killed).metrics)
    assert 40 <= rows_before < 151

    resumed = subprocess.run(_connect_args(digits_modes, killed) + ["--resume"], cwd=REPO,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    _, stderr = uninterrupted.communicate(timeout=600)
    assert uninterrupted.returncode == 0, stderr
    a, b = load_run(reference), load_run(killed)
    assert b.status == "finished"
    pd.testing.assert_frame_equal(_comparable(a.metrics), _comparable(b.metrics), rtol=1e-5, atol=1e-7)
    pd.testing.assert_frame_equal(a.layers, b.layers, rtol=1e-5, atol=1e-7)
    pd.testing.assert_frame_equal(a.continuity, b.continuity, rtol=1e-5, atol=1e-7)
    assert [t for t, _ in a.points()] == [t for t, _ in b.points()]
    for (tick, pa), (_, pb) in zip(a.points(), b.points()):
        ta, tb = load_file(pa), load_file(pb)
        for k in ta:
            assert torch.allclose(ta[k], tb[k], rtol=1e-5, atol=1e-6), (tick, k)


def test_stop_event_checkpoints_and_resume_finishes(digits_modes, tmp_path):
    import threading
    stop = threading.Event()
    cfg = dataclasses.replace(load_preset("mlp-digits-m2m"), ticks=60, checkpoint_every=1000)
    seen = []

    def on_tick(event):
        seen.append(event.tick)
        if event.tick == 20:
            stop.set()

    run = run_search(*digits_modes, cfg, tmp_path / "run", on_tick=on_tick, stop_event=stop)
    assert run.status == "stopped" and seen[-1] == 20
    assert 20 in [t for t, _ in run.points()]
    run = run_search(None, None, None, tmp_path / "run", resume=True)
    assert run.status == "finished"
    assert list(run.metrics["tick"]) == list(range(61))
    assert load_mode(run.points()[-1][1], "point").meta.extra["llpf.tick"] == "60"


def test_pause_checkpoints_waits_and_continues(digits_modes, tmp_path):
    """Pause at tick 10: the run is marked paused with a checkpoint at that tick, no tick runs while
    paused, and clearing the event continues to the same result as an uninterrupted run."""
    import threading
    pause = threading.Event()
    cfg = dataclasses.replace(load_preset("mlp-digits-m2m"), ticks=30, checkpoint_every=1000)
    out = tmp_path / "run"
    seen = []

    def on_tick(event):
        seen.append(event.tick)
        if event.tick == 10:
            pause.set()

    thread = threading.Thread(target=run_search, args=(*digits_modes, cfg, out),
                              kwargs={"on_tick": on_tick, "pause_event": pause})
    thread.start()
    deadline = time.time() + 60
    while not ((out / "run.json").exists() and load_run(out).status == "paused") and time.time() < deadline:
        time.sleep(0.05)
    assert load_run(out).status == "paused"
    assert json.loads((out / "checkpoint.json").read_text())["tick"] == 10
    time.sleep(0.5)
    assert seen[-1] == 10
    pause.clear()
    thread.join(60)
    run = load_run(out)
    assert run.status == "finished" and list(run.metrics["tick"]) == list(range(31))
    plain = run_search(*digits_modes, cfg, tmp_path / "plain")
    assert np.allclose(run.metrics["distance"], plain.metrics["distance"], rtol=1e-5)


def test_cross_sphere_joins_modes_on_different_spheres(digits_modes, tmp_path):
    """B' is mode B with layer 0 halved and layer 1's weight doubled: the same function (ReLU is
    positively homogeneous) on other variance spheres. to_vs reaches them, then M2M joins B'."""
    a, b = digits_modes
    state = {k: v.clone() for k, v in b.model.state_dict().items()}
    for k in ("layers.0.weight", "layers.0.bias"):
        state[k] *= 0.5
    state["layers.1.weight"] *= 2.0
    b_path = tmp_path / "b-rescaled.safetensors"
    save_mode(b_path, state, b.meta)
    b = load_mode(b_path)
    x, y = load_dataset("digits").batch(torch.arange(100))
    assert torch.allclose(b.model(x), digits_modes[1].model(x), atol=1e-4)
    norms_b = {n: p.norm().item() for n, p in b.model.named_parameters()}

    cfg = dataclasses.replace(load_preset("mlp-digits-m2m"), algorithm="cross_sphere")
    run = run_search(a, b, cfg, tmp_path / "run")
    m = run.metrics
    stages = m["stage"].tolist()
    switch = stages.index("m2m")
    assert set(stages[:switch]) == {"to_vs"} and set(stages[switch:]) == {"m2m"}
    assert switch - 1 < cfg.bridge.ticks  # the bridge ended because it reached B's sphere
    on_sphere = run.point(switch - 1).model.state_dict()
    for n, norm_b in norms_b.items():
        assert abs(on_sphere[n].norm().item() / norm_b - 1) <= cfg.bridge.tolerance, n
    assert list(m["tick"]) == list(range(len(m))) and len(m) == switch + cfg.ticks
    s = run_summary(run)
    assert s["path_max_train_loss"] <= min(0.05, s["barrier"] / 5), s
    assert s["final_distance_rel"] <= 0.02, s


def test_m2o_shrinks_while_keeping_the_loss_low(digits_modes, tmp_path):
    """The default preset's depth (bench/m2o_depth.py, seed 1: first layer's variance 0.19 of the start's,
    whole-model norm 0.58, path max 0.044)."""
    run = run_search(digits_modes[0], "origin", load_preset("mlp-digits-m2o"), tmp_path / "run")
    m, layers = run.metrics, run.layers
    assert run.status == "finished" and run.info["end"] is None
    first, last = layers[layers.tick == 0], layers[layers.tick == 300]
    ratio = last["norm"].to_numpy() / first["norm"].to_numpy()
    assert (ratio < 0.95).all(), ratio  # every layer shrank, though training pulls the norms back up
    var_rel = last.set_index("layer")["variance_rel"]
    assert var_rel["layers.0.weight"] <= 0.3, var_rel
    assert m["distance_rel"].iloc[-1] < 0.65  # whole-model norm, relative to the start
    assert m["train_loss"].max() < 0.055
    assert (m["test_acc"] > 0.95).all()


@pytest.mark.parametrize("target", ["start", "blend"])
def test_variance_target(digits_modes, tmp_path, target):
    """start (the reference): every point sits on the start mode's variance sphere. blend: the target
    moves to the end mode's sphere as the path closes in, so the path ends on the end mode."""
    cfg = dataclasses.replace(load_preset("mlp-digits-m2m"), variance_target=target, ticks=150,
                              variance_eps=0.0)
    run = run_search(*digits_modes, cfg, tmp_path / "run")
    layers = run.layers
    start_var = layers[layers.tick == 0].set_index("layer")["variance"]
    end_var = {n: p.detach().var().item() for n, p in digits_modes[1].model.named_parameters()}
    last = layers[layers.tick == 150].set_index("layer")["variance"]
    if target == "start":
        assert ((layers["variance_rel"] - 1).abs() < 1e-4).all()
    else:
        for n, v in last.items():
            assert abs(v / end_var[n] - 1) < abs(start_var[n] / end_var[n] - 1) / 2, n


def test_divergence_marks_the_run_failed_and_keeps_saved_points(digits_modes, tmp_path):
    from llpf_core import UserError
    cfg = apply_overrides(load_preset("mlp-digits-m2m"), ["train.lr=1e6", "ticks=50", "save_every=1"])
    with pytest.raises(UserError, match="diverged"):
        run_search(*digits_modes, cfg, tmp_path / "run")
    run = load_run(tmp_path / "run")
    assert run.status == "failed" and "diverged" in run.error and "train.lr" in run.error
    assert run.points()  # every point saved before the divergence still loads
    for _, path in run.points():
        load_mode(path, "point")


def test_stop_when_loss_exceeds_ends_the_run_early(digits_modes, tmp_path):
    cfg = apply_overrides(load_preset("mlp-digits-m2m"), ["stop_when_loss_exceeds=0.0001", "ticks=50"])
    run = run_search(*digits_modes, cfg, tmp_path / "run")
    assert run.status == "finished" and "exceeded" in run.info["stopped_early"]
    assert len(run.metrics) < 51
    assert not pd.isna(run.metrics["train_loss"].iloc[-1])  # the last tick is evaluated


def test_ctrl_c_stops_with_a_checkpoint_and_resume_finishes(digits_modes, tmp_path):
    out = tmp_path / "run"
    args = _connect_args(digits_modes, out)
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while checkpoint_tick(out) < 20:  # 130 ticks are left: the run cannot finish before the signal
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.002)
    proc.send_signal(signal.SIGINT)
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "--resume" in stdout
    run = load_run(out)
    assert run.status == "stopped"
    stopped_at = int(run.metrics["tick"].iloc[-1])
    assert stopped_at < 150 and stopped_at in [t for t, _ in run.points()]
    subprocess.run(args + ["--resume"], cwd=REPO, check=True, capture_output=True)
    run = load_run(out)
    assert run.status == "finished" and list(run.metrics["tick"]) == list(range(151))


def test_out_of_memory_is_a_one_line_error_and_marks_the_run_failed(digits_modes, tmp_path, monkeypatch):
    import llpf_core.connect
    from llpf_core import UserError

    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(llpf_core.connect, "train_until", no_memory)
    with pytest.raises(UserError, match=r"out of memory: searching on cpu: start a new run .* --set train.batch_size="):
        run_search(*digits_modes, load_preset("mlp-digits-m2m"), tmp_path / "run")
    run = load_run(tmp_path / "run")
    assert run.status == "failed" and run.error.startswith("out of memory")
    assert [t for t, _ in run.points()] == [0]  # what was written before stays


def test_channels_last_gives_the_run_of_the_default_layout(tmp_path):
    """The NHWC layout (training and evaluation) changes speed, not results: a convolutional search
    with channels_last=true logs what the default layout's does, to float rounding."""
    for seed in (1, 2):
        torch.manual_seed(seed)
        net = build_model("cnn", num_classes=10, in_channels=1, image_size=8)
        save_mode(tmp_path / f"cnn{seed}.safetensors", net,
                  ModeMeta(model="cnn", model_kwargs={"num_classes": 10, "in_channels": 1, "image_size": 8},
                           dataset="digits", seed=seed))
    runs = {}
    for layout in (False, True):
        cfg = SearchConfig(algorithm="m2m", ticks=6, phases=[Phase(step_a=0.1)], eval_every=3, save_every=3,
                           train=TrainSpec(lr=0.01, min_iters=3, max_iters=3), baseline_points=3,
                           continuity=dataclasses.replace(SearchConfig().continuity, points=4, every=3),
                           channels_last=layout)
        runs[layout] = run_search(tmp_path / "cnn1.safetensors", tmp_path / "cnn2.safetensors", cfg,
                                  tmp_path / f"run-{layout}")
    default, nhwc = runs[False], runs[True]
    for table in ("metrics", "baseline", "continuity"):
        a, b = getattr(default, table), getattr(nhwc, table)
        a, b = a.drop(columns=["wall_s"], errors="ignore"), b.drop(columns=["wall_s"], errors="ignore")
        assert len(a) and a.shape == b.shape, table
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-4, atol=1e-6)
    for (_, pa), (_, pb) in zip(default.points(), nhwc.points()):
        for k, v in load_file(pa).items():
            assert torch.allclose(v, load_file(pb)[k], rtol=1e-4, atol=1e-6), k


def test_evaluation_does_not_depend_on_the_pass_size(monkeypatch):
    """The CPU's smaller evaluation passes (a last, shorter one included) give the means of one big pass."""
    import llpf_core.evaluate as evaluate

    train, test = load_dataset("digits"), load_dataset("digits", "test")
    torch.manual_seed(0)
    state = build_model("mlp").state_dict()
    results = []
    for per_pass in (4096, evaluate.EVAL_BATCH_CPU, 7):
        monkeypatch.setattr(evaluate, "EVAL_BATCH_CPU", per_pass)
        results.append(evaluate.Evaluator(build_model("mlp"), train, test, 0, 0, 10, 32).evaluate(state))
    assert len(train) % evaluate.EVAL_BATCH_CPU and len(train) > evaluate.EVAL_BATCH_CPU
    for r in results[1:]:
        assert r == pytest.approx(results[0], rel=1e-5)
