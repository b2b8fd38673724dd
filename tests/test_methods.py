"""Path methods (linear, bezier, rebasin): formulas, permutation specs, weight matching, the CLI."""
import pytest
import torch

from conftest import run_cli
from llpf_core import build_model, load_recipe, load_run, train_mode
from llpf_core.methods.bezier import bezier
from llpf_core.methods.rebasin import SPECS, apply_permutation, permutation_spec, weight_matching
from llpf_core.modefile import ModeMeta, load_mode, save_mode

SHAPES = {"mlp": {}, "lenet5": {"in_channels": 1, "image_size": 28}, "cnn": {}, "vgg11": {}, "resnet18": {}}


def test_bezier_formula_at_ends_and_middle():
    a, c, b = torch.tensor([1.0, 2.0]), torch.tensor([5.0, -1.0]), torch.tensor([3.0, 0.0])
    assert torch.equal(bezier(a, c, b, 0.0), a)
    assert torch.equal(bezier(a, c, b, 1.0), b)
    assert torch.allclose(bezier(a, c, b, 0.5), 0.25 * a + 0.5 * c + 0.25 * b)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_permuted_model_computes_the_same_function(name):
    torch.manual_seed(0)
    model = build_model(name, **SHAPES[name])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for k, v in state.items():  # BatchNorm statistics that are not all 0/1, so a wrong permutation shows
        if k.endswith("running_mean"):
            v.normal_()
        elif k.endswith("running_var"):
            v.uniform_(0.5, 2)
    spec = permutation_spec(name, state)
    g = torch.Generator().manual_seed(1)
    perms = {grp: torch.randperm(state[axes[0][0]].shape[axes[0][1]] // axes[0][2], generator=g)
             for grp, axes in spec.items()}
    permuted = apply_permutation(spec, perms, state)
    assert any(not torch.equal(permuted[k], state[k]) for k in state)
    x = torch.randn(2, *model.input_shape)
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        want = model(x)
        model.load_state_dict(permuted)
        got = model(x)
    assert (got - want).abs().max() <= 1e-5


def test_weight_matching_recovers_a_known_permutation(digits_modes):
    state = digits_modes[0].model.state_dict()
    spec = permutation_spec("mlp", state)
    g = torch.Generator().manual_seed(3)
    secret = {grp: torch.randperm(64, generator=g) for grp in spec}
    shuffled = apply_permutation(spec, secret, state)
    found = weight_matching(spec, state, shuffled)
    aligned = apply_permutation(spec, found, shuffled)
    for k in state:
        assert torch.equal(aligned[k], state[k]), k


def test_unsupported_model_and_bad_input_exit_2_nothing_written(tmp_path, digits_modes):
    for seed in (1, 2):
        model = build_model("shufflenet_v2")
        save_mode(tmp_path / f"s{seed}.safetensors", model, ModeMeta(model="shufflenet_v2", model_kwargs={},
                                                                     dataset="cifar10", seed=seed))
    out = tmp_path / "run"
    proc = run_cli("connect", tmp_path / "s1.safetensors", tmp_path / "s2.safetensors", "--algorithm", "rebasin",
                   "--out", out)
    assert proc.returncode == 2 and "rebasin has no permutation spec" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not out.exists()
    a, b = (m.path for m in digits_modes)
    proc = run_cli("connect", a, b, "--algorithm", "bezier", "--set", "curve.bends=2", "--out", out)
    assert proc.returncode == 2 and "curve.bends" in proc.stderr and not out.exists()
    proc = run_cli("connect", a, tmp_path / "s2.safetensors", "--algorithm", "linear", "--out", out)
    assert proc.returncode == 2 and "different architectures" in proc.stderr and not out.exists()
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def fresh_pair(tmp_path_factory):
    """Digits MLPs of seeds no other test uses."""
    root = tmp_path_factory.mktemp("pair")
    recipe = load_recipe("mlp-digits")
    return [train_mode("mlp", "digits", s, root / f"s{s}.safetensors", recipe, "cpu", recipe_name="mlp-digits")
            for s in (31, 32)]


def test_bezier_and_rebasin_beat_the_barrier(tmp_path, fresh_pair):
    a, b = (m.path for m in fresh_pair)
    run_cli("connect", a, b, "--algorithm", "bezier", "--set", "curve.steps=1500", "--device", "cpu",
            "--quiet", "--out", tmp_path / "bez", check=True)
    run_cli("connect", a, b, "--algorithm", "rebasin", "--device", "cpu", "--quiet", "--out", tmp_path / "reb",
            check=True)
    bez, reb = load_run(tmp_path / "bez"), load_run(tmp_path / "reb")
    for run in (bez, reb):
        p = run.path_table
        assert p["position"].iloc[0] == 0 and p["position"].iloc[-1] == pytest.approx(1)
        assert run.info["summary"]["path_length"] > 0
    s = bez.info["summary"]
    assert s["path_max_train_loss"] <= s["barrier"] / 5 and s["sgd_steps"] == 1500
    last = bez.point(bez.points()[-1][0]).model.state_dict()
    for k, v in fresh_pair[1].model.state_dict().items():
        assert torch.equal(last[k], v)
    s = reb.info["summary"]
    assert s["path_max_train_loss"] <= s["barrier"] / 4
    aligned = load_mode(tmp_path / "reb" / "aligned_end.safetensors").model.eval()
    x = torch.randn(50, 1, 8, 8)
    with torch.no_grad():
        assert (aligned(x) - fresh_pair[1].model.eval()(x)).abs().max() <= 1e-5


def test_a_stopped_bezier_run_resumes_from_its_checkpoint_as_if_never_stopped(tmp_path, digits_modes,
                                                                            monkeypatch):
    import dataclasses
    import json
    import threading

    from llpf_core import load_preset, run_search
    from llpf_core.runfolder import RunWriter
    a, b = digits_modes
    cfg = dataclasses.replace(load_preset("mlp-digits-m2m"), algorithm="bezier", checkpoint_every=20,
                              device="cpu", curve=dataclasses.replace(load_preset("mlp-digits-m2m").curve,
                                                                      steps=400, points=5))
    whole = run_search(a, b, cfg, tmp_path / "whole")
    stop, save = threading.Event(), RunWriter.save_checkpoint

    def save_then_stop(writer, tensors, info):  # Stop pressed right after the checkpoint at step 20
        save(writer, tensors, info)
        if info["tick"] == 20:
            stop.set()

    monkeypatch.setattr(RunWriter, "save_checkpoint", save_then_stop)
    cut = run_search(a, b, cfg, tmp_path / "cut", stop_event=stop)
    monkeypatch.setattr(RunWriter, "save_checkpoint", save)
    assert cut.status == "stopped" and not cut.points()
    step = json.loads((tmp_path / "cut" / "checkpoint.json").read_text())["step"]
    assert step == 20  # the stop's own checkpoint, at the step after which it was seen
    resumed = run_search(None, None, None, tmp_path / "cut", resume=True)
    assert resumed.status == "finished" and resumed.info["summary"]["sgd_steps"] == 400
    assert resumed.info["resumed_from_step"] == step
    for (t1, f1), (t2, f2) in zip(whole.points(), resumed.points(), strict=True):
        s1, s2 = load_mode(f1).model.state_dict(), load_mode(f2).model.state_dict()
        for k in s1:
            torch.testing.assert_close(s2[k], s1[k], rtol=1e-5, atol=1e-6)
    assert list(resumed.path_table["train_loss"]) == pytest.approx(list(whole.path_table["train_loss"]), rel=1e-4)
