"""REPAIR (llpf_core/repair.py) on real digits MLP modes, LeNet-5 on Fashion-MNIST images, and the
BatchNorm route."""
import pytest
import torch
from torch.func import functional_call

from llpf_core.data import load_dataset
from llpf_core.errors import UserError
from llpf_core.registry import build_model
from llpf_core.repair import Repair, check_repairable, repair_inputs


def _outputs(model, state, inputs):
    with torch.no_grad():
        return torch.cat([functional_call(model.eval(), state, (x,)) for x in inputs])


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "train")


@pytest.fixture(scope="module")
def mlp_repair(digits_modes, digits):
    a, b = (m.model.state_dict() for m in digits_modes)
    model = build_model("mlp", **digits.model_kwargs())
    return Repair(model, a, b, repair_inputs(digits, 500, seed=3, batch_size=128))


def test_repair_at_the_ends_returns_the_endpoints_functions(mlp_repair, digits):
    rep = mlp_repair
    held_out = [digits.batch(torch.arange(600, 900))[0]]  # not the statistics' samples only
    for t, end in ((0.0, rep.a), (1.0, rep.b)):
        point = rep.point(t)
        assert list(point) == list(end) and all(point[k].shape == end[k].shape for k in end)
        assert (_outputs(rep.model, point, held_out) - _outputs(rep.model, end, held_out)).abs().max() < 1e-4


def test_repaired_midpoint_statistics_match_the_interpolated_targets(mlp_repair):
    rep = mlp_repair
    assert rep.hidden == ["layers.0", "layers.1"]  # the head is not repaired
    plain = {k: torch.lerp(v, rep.b[k], 0.5) for k, v in rep.a.items()}
    point = rep.point(0.5)
    targets = rep.targets(0.5)
    measured = rep.statistics(point)
    before = rep.statistics(plain)
    for name in rep.hidden:
        goal_mean, goal_std = targets[name]
        mean, std = measured[name]
        assert torch.allclose(mean, goal_mean, atol=1e-4, rtol=1e-4)
        assert torch.allclose(std, goal_std, atol=1e-4, rtol=1e-4)
        expected = (rep.targets_a[name][1] + rep.targets_b[name][1]) / 2
        assert torch.allclose(goal_std, expected)
    # the plain midpoint's second layer has lost variance; the repair restored it
    assert before["layers.1"][1].mean() < 0.9 * targets["layers.1"][1].mean()
    assert all(torch.equal(point[k], plain[k]) for k in ("head.weight", "head.bias"))


@pytest.fixture(scope="module")
def fashion():
    return load_dataset("fashion-mnist", "test")


def test_repair_on_lenet5_fuses_into_convs_and_linears(fashion):
    kwargs = fashion.model_kwargs()
    torch.manual_seed(11)
    a = build_model("lenet5", **kwargs).state_dict()
    torch.manual_seed(12)
    b = build_model("lenet5", **kwargs).state_dict()
    rep = Repair(build_model("lenet5", **kwargs), a, b, repair_inputs(fashion, 256, seed=0, batch_size=128))
    assert rep.hidden == ["conv1", "conv2", "fc1", "fc2"]
    inputs = [fashion.batch(torch.arange(300, 400))[0]]
    assert (_outputs(rep.model, rep.point(0.0), inputs) - _outputs(rep.model, a, inputs)).abs().max() < 1e-4
    assert (_outputs(rep.model, rep.point(1.0), inputs) - _outputs(rep.model, b, inputs)).abs().max() < 1e-4
    point = rep.point(0.3)
    for name, (mean, std) in rep.statistics(point).items():
        goal_mean, goal_std = rep.targets(0.3)[name]
        assert torch.allclose(mean, goal_mean, atol=1e-4) and torch.allclose(std, goal_std, atol=1e-4, rtol=1e-4)


def test_batchnorm_models_get_their_statistics_reset(digits):
    kwargs = {**digits.model_kwargs()}
    torch.manual_seed(21)
    a = build_model("cnn", **kwargs).state_dict()
    torch.manual_seed(22)
    b = build_model("cnn", **kwargs).state_dict()
    a["0.1.running_mean"] += 3.0  # stale statistics that no interpolation should keep
    inputs = [digits.batch(torch.arange(0, 200))[0]]
    model = build_model("cnn", **kwargs)
    rep = Repair(model, a, b, inputs)
    assert rep.kind == "batchnorm"
    point = rep.point(0.5)
    assert list(point) == list(a)
    conv = torch.nn.functional.conv2d(inputs[0], point["0.0.weight"], padding=1)
    assert torch.allclose(point["0.1.running_mean"], conv.mean((0, 2, 3)), atol=1e-5)
    assert torch.equal(point["0.0.weight"], torch.lerp(a["0.0.weight"], b["0.0.weight"], 0.5))


@pytest.mark.parametrize("name", ["vgg11", "resnet18"])
def test_zoo_batchnorm_models_take_the_statistics_reset(name):
    model = build_model(name, num_classes=10, in_channels=3, image_size=32)
    assert check_repairable(model, torch.zeros(2, 3, 32, 32)) == "batchnorm"


def test_an_architecture_repair_cannot_handle_is_refused_in_one_line():
    layer_norm = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
    shared = torch.nn.Linear(4, 4)
    twice = torch.nn.Sequential(shared, torch.nn.ReLU(), shared, torch.nn.Linear(4, 2))
    no_bias = torch.nn.Sequential(torch.nn.Linear(4, 4, bias=False), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    for model, words in ((layer_norm, "LayerNorm"), (twice, "more than once"), (no_bias, "no bias")):
        with pytest.raises(UserError, match=words) as e:
            check_repairable(model, torch.zeros(2, 4))
        assert "\n" not in str(e.value)
