"""AutoNEB's pieces (llpf_core/neb.py) on constructed chains and losses, and a small run on a 2-D loss."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from llpf_core.data import ImageData
from llpf_core.errors import UserError
from llpf_core.neb import (AutoNEB, AutoNEBSettings, Cycle, arc_lengths, bulges, dense_points,
                           improved_tangents, insert_at_bulges, project_out, respace)
from llpf_core.train import BatchStream


def test_tangent_projection_leaves_no_component_along_the_tangent():
    g = torch.Generator().manual_seed(0)
    pivots = torch.randn(7, 50, generator=g, dtype=torch.float64)
    grads = torch.randn(5, 50, generator=g, dtype=torch.float64)
    for losses in (torch.tensor([0., 1, 2, 3, 4, 5, 6]), torch.tensor([6., 5, 4, 3, 2, 1, 0]),
                   torch.tensor([0., 2, 1, 3, 0.5, 0.7, 0]), torch.zeros(7)):
        tangents = improved_tangents(pivots, losses.double())
        assert torch.allclose(tangents.norm(dim=1), torch.ones(5, dtype=torch.float64))
        projected = project_out(grads, tangents)
        assert (projected * tangents).sum(1).abs().max() < 1e-12
        # what is left is the rest of the gradient: the part perpendicular to the tangent is unchanged
        assert not torch.allclose(projected, grads)


def test_improved_tangent_points_to_the_higher_neighbour_on_a_slope():
    pivots = torch.tensor([[0., 0], [1, 0], [1, 1]])
    up = improved_tangents(pivots, torch.tensor([0., 1, 2]))  # rising: toward the next pivot
    down = improved_tangents(pivots, torch.tensor([2., 1, 0]))  # falling: from the previous pivot
    assert torch.allclose(up, torch.tensor([[0., 1]]))
    assert torch.allclose(down, torch.tensor([[1., 0]]))
    # a maximum with a higher next neighbour leans toward the next direction
    peak = improved_tangents(pivots, torch.tensor([0., 3, 2]))
    assert peak[0, 1] > peak[0, 0] > 0


def test_respacing_gives_equal_arc_lengths_and_keeps_the_ends():
    g = torch.Generator().manual_seed(1)
    chain = torch.cumsum(torch.rand(9, 3, generator=g, dtype=torch.float64) ** 3, 0)  # very uneven spacing
    fractions = torch.full((8,), 1 / 8, dtype=torch.float64)
    out = respace(chain, fractions)
    seg = (out[1:] - out[:-1]).norm(dim=1)
    assert torch.equal(out[0], chain[0]) and torch.equal(out[-1], chain[-1])
    # on a straight chain the re-spaced points are exactly equally spaced
    line = torch.linspace(0, 1, 9, dtype=torch.float64)[:, None] ** 2 * torch.tensor([[3., 4]], dtype=torch.float64)
    spaced = respace(line, fractions)
    assert torch.allclose((spaced[1:] - spaced[:-1]).norm(dim=1), torch.full((8,), 5 / 8, dtype=torch.float64))
    # on a bent chain, every new pivot lies on the old polyline at equal arc-length steps
    s_old = arc_lengths(chain)
    assert seg.sum() <= s_old[-1] + 1e-9  # chords cut corners, never lengthen
    respaced_again = respace(out, fractions)
    seg2 = (respaced_again[1:] - respaced_again[:-1]).norm(dim=1)
    assert seg2.max() / seg2.min() < seg.max() / seg.min() + 1e-9
    # weighted fractions: segment lengths follow the weights on a straight chain
    weights = torch.tensor([1., 2, 1, 4], dtype=torch.float64)
    w = respace(line[::2], weights / weights.sum())
    assert torch.allclose((w[1:] - w[:-1]).norm(dim=1), 5 * weights / weights.sum())


def test_insertion_picks_the_segment_with_the_largest_bulge():
    pivots = torch.linspace(0, 4, 5, dtype=torch.float64)[:, None] * torch.tensor([[1., 0]], dtype=torch.float64)
    fractions = torch.full((4,), 0.25, dtype=torch.float64)
    per = 3
    points = dense_points(pivots, per)
    x = points[:, 0]
    # a constructed loss: a linear tilt plus a small bump in segment 0 and a big one in segment 2 at x = 2.75
    loss = 0.1 * x + 0.3 * torch.exp(-((x - 0.5) / 0.1) ** 2) + 2.0 * torch.exp(-((x - 2.75) / 0.1) ** 2)
    score, alpha = bulges(loss, len(pivots))
    assert score.argmax() == 2 and alpha[2] == 0.75
    new, new_fractions, n = insert_at_bulges(pivots, fractions, loss, 1, threshold=0.1)
    assert n == 1 and len(new) == 6
    assert torch.allclose(new[3], torch.tensor([2.75, 0.], dtype=torch.float64))
    assert torch.allclose(new_fractions, torch.tensor([0.25, 0.25, 0.1875, 0.0625, 0.25], dtype=torch.float64))
    two, _, n2 = insert_at_bulges(pivots, fractions, loss, 2, threshold=0.1)
    assert n2 == 2 and torch.allclose(two[1], torch.tensor([0.5, 0.], dtype=torch.float64))
    # bulges under the threshold get no pivot
    assert insert_at_bulges(pivots, fractions, 0.1 * x, 3, threshold=0.1)[2] == 0


class Surface(nn.Module):
    """A 2-D loss landscape as a model: the parameter is a point, the loss of label 0 is softplus(f)."""

    def __init__(self):
        super().__init__()
        self.point = nn.Parameter(torch.zeros(2))

    def forward(self, x):
        px, py = self.point[0], self.point[1]
        ridge = 4 * torch.exp(-(px ** 2 + (py - 0.15) ** 2) / (2 * 0.3 ** 2))  # a bump just above the line
        f = ridge + 0.5 * py ** 2 + 0.2 * (px ** 2 - 1) ** 2 - 1
        return torch.stack([torch.zeros_like(f), f]).expand(len(x), 2) + 0 * x.flatten(1)[:, :1]


def _surface_run(settings: AutoNEBSettings):
    model = Surface()
    data = ImageData("points", "train", torch.zeros(32, 1, 1, 1), torch.zeros(32), 1.0, (0.,), (1.,), 2, None)
    a, b = {"point": torch.tensor([-1., 0])}, {"point": torch.tensor([1., 0])}
    x = torch.zeros(1, 1, 1, 1)

    def dense_loss(states):
        with torch.no_grad():
            return [F.cross_entropy(functional_call(model, s, (x,)), torch.zeros(1, dtype=torch.long)).item()
                    for s in states]
    stream = BatchStream(data, 8, torch.Generator().manual_seed(0), augment=False)
    return AutoNEB(model, a, b, stream, dense_loss, settings), dense_loss


SURFACE = AutoNEBSettings(pivots=3, cycles=(Cycle(40, 0.1, 0), Cycle(40, 0.1, 2), Cycle(40, 0.02, 2)),
                          dense_per_segment=4)


def test_autoneb_bends_around_a_ridge_and_ends_exactly_at_the_ends():
    neb, dense_loss = _surface_run(SURFACE)
    line = dense_loss([{"point": torch.tensor([-1 + 2 * i / 40, 0.])} for i in range(41)])
    assert neb.advance(10 ** 6) == 120 and neb.done and neb.sgd_steps == 120
    states = neb.path_states()
    assert torch.equal(states[0]["point"], torch.tensor([-1., 0])) and torch.equal(states[-1]["point"],
                                                                                   torch.tensor([1., 0]))
    assert len(states) == 5 + sum(h["inserted"] for h in neb.history)
    path_max = float(neb.evaluate_dense().max())
    assert path_max < max(line) / 3, (path_max, max(line))
    ys = torch.stack([s["point"] for s in states])[:, 1]
    assert ys.min() < -0.4  # it went below the ridge's centre, around it
    assert [h["cycle"] for h in neb.history] == [0, 1, 2]


def test_autoneb_resumes_from_a_checkpoint_at_any_step_exactly():
    whole, _ = _surface_run(SURFACE)
    whole.advance(10 ** 6)
    part, _ = _surface_run(SURFACE)
    part.advance(57)  # mid-cycle, after one insertion
    tensors, info = part.state_dict()
    import json
    info = json.loads(json.dumps(info))  # JSON-able
    resumed, _ = _surface_run(SURFACE)
    resumed.load_state_dict({k: v.clone() for k, v in tensors.items()}, info)
    assert resumed.advance(10 ** 6) == 120 - 57
    assert torch.allclose(resumed.pivots, whole.pivots, atol=1e-6)
    assert resumed.history == whole.history and resumed.sgd_steps == 120


def test_autoneb_checkpoint_of_another_model_is_refused():
    neb, _ = _surface_run(SURFACE)
    tensors, info = neb.state_dict()
    tensors["pivots"] = torch.zeros(5, 3)
    with pytest.raises(UserError, match="does not fit this model"):
        neb.load_state_dict(tensors, info)


def test_autoneb_settings_round_trip_through_json():
    import json
    settings = AutoNEBSettings(pivots=4, cycles=(Cycle(10, 0.1, 0), Cycle(5, 0.01, 3)), weight_decay=1e-4)
    assert AutoNEBSettings.from_dict(json.loads(json.dumps(settings.to_dict()))) == settings
    assert AutoNEBSettings.from_dict({"cycles": [[10, 0.1, 0]]}).cycles == (Cycle(10, 0.1, 0),)
    assert AutoNEBSettings.from_dict({}) == AutoNEBSettings()
    with pytest.raises(UserError, match="unknown setting 'pivot'"):
        AutoNEBSettings.from_dict({"pivot": 3})
    with pytest.raises(UserError, match="steps, lr and inserts"):
        AutoNEBSettings.from_dict({"cycles": [[10, 0.1]]})


@pytest.mark.parametrize("bad", [AutoNEBSettings(cycles=()), AutoNEBSettings(pivots=0), AutoNEBSettings(batch_size=0),
                                 AutoNEBSettings(cycles=(Cycle(10, 0.0, 0),)), AutoNEBSettings(dense_per_segment=0)])
def test_autoneb_settings_no_run_can_use_are_one_line_errors(bad):
    with pytest.raises(UserError, match="autoneb"):
        bad.check()


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_autoneb_on_real_models_gives_complete_states_from_a_to_b(name):
    """On digits models, with and without BatchNorm: every path state has A's keys and shapes, the ends
    are A and B, and the skeleton passed in is left as it was."""
    from llpf_core.data import load_dataset
    from llpf_core.registry import build_model
    train = load_dataset("digits", "train")
    torch.manual_seed(5)
    a = build_model(name, **train.model_kwargs()).state_dict()
    torch.manual_seed(6)
    b = build_model(name, **train.model_kwargs()).state_dict()
    settings = AutoNEBSettings(pivots=2, cycles=(Cycle(3, 0.01, 0), Cycle(2, 0.01, 1)), dense_per_segment=2)
    scratch = build_model(name, **train.model_kwargs())

    def dense_loss(states):
        x, y = train.batch(torch.arange(64))
        with torch.no_grad():
            return [F.cross_entropy(functional_call(scratch.eval(), s, (x,)), y).item() for s in states]
    neb = AutoNEB(scratch, a, b, BatchStream(train, 16, torch.Generator().manual_seed(0), augment=False),
                  dense_loss, settings)
    neb.advance(100)
    states = neb.path_states()
    assert states[0] is not a and all(torch.equal(states[0][k], a[k]) for k in a)
    assert all(torch.equal(states[-1][k], b[k]) for k in b)
    for s in states:
        assert list(s) == list(a) and all(s[k].shape == a[k].shape for k in a)
    assert all(math.isfinite(h["dense_max"]) for h in neb.history)
    assert len(states) == 4 + neb.history[1]["inserted"]
    assert not any(torch.equal(states[1][k], a[k]) for k in a if k.endswith("weight"))  # moved off A
    assert set(scratch.state_dict()) == set(a)  # BatchNorm's running statistics still there
    if name == "cnn":  # float buffers interpolated by arc position, between A's and B's
        key = "0.1.running_var"
        lo, hi = torch.minimum(a[key], b[key]), torch.maximum(a[key], b[key])
        assert all(((s[key] >= lo - 1e-6) & (s[key] <= hi + 1e-6)).all() for s in states)


def test_evaluator_loss_is_the_evaluator_s_train_loss(digits_modes):
    """The dense evaluation through the evaluator gives the run's train_loss (here on the whole split)."""
    from llpf_core.data import load_dataset
    from llpf_core.evaluate import Evaluator
    from llpf_core.neb import evaluator_loss
    from llpf_core.registry import build_model
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    evaluator = Evaluator(build_model("mlp", **train.model_kwargs()), train, test, 0, 0, 10, 64)
    states = [m.model.state_dict() for m in digits_modes]
    losses = evaluator_loss(evaluator, 0, 0)(states)
    assert losses == pytest.approx([evaluator.evaluate(s)["train_loss"] for s in states], rel=1e-6)
    assert evaluator_loss(evaluator, 100, 0)(states) != losses  # a fixed subset of 100 samples


def test_autoneb_resumes_exactly_with_dropout():
    """Dropout's masks come from torch's generator, which the checkpoint carries."""
    from llpf_core.data import load_dataset
    train = load_dataset("digits", "train")
    settings = AutoNEBSettings(pivots=2, cycles=(Cycle(4, 0.05, 0), Cycle(4, 0.05, 1)), dense_per_segment=2)
    x, y = train.batch(torch.arange(128))

    def make():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 10))
        a = {k: v.detach().clone() for k, v in model.state_dict().items()}
        b = {k: v + 0.3 * torch.randn_like(v) for k, v in a.items()}

        def dense_loss(states):
            with torch.no_grad():
                return [F.cross_entropy(functional_call(model.eval(), s, (x,)), y).item() for s in states]
        return AutoNEB(model, a, b, BatchStream(train, 32, torch.Generator().manual_seed(1)), dense_loss, settings)
    whole = make()
    torch.manual_seed(7)
    whole.advance(100)
    part = make()
    torch.manual_seed(7)
    part.advance(6)
    tensors, info = part.state_dict()
    torch.manual_seed(123)  # whatever happened in between
    resumed = make()
    resumed.load_state_dict(tensors, info)
    resumed.advance(100)
    assert torch.equal(resumed.pivots, whole.pivots)
