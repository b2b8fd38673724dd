"""Each LLPF formula pinned to a value computed by hand."""
import math

import pytest
import torch

from llpf_core import TrainSpec
from llpf_core.geometry import (
    VarianceCorrection,
    angle_conformal_lr,
    cosine,
    distance,
    geodesic,
    move_,
    variance,
    variance_factor,
)
from llpf_core.train import should_stop


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


@pytest.mark.parametrize("step_a, step_f, step_c_len, clamp, expected", [
    (0.1, 0.0, 0.0, True, (0.3, 0.4)),    # weighted average: L = 0.1 * 5
    (0.1, 1.0, 0.0, True, (0.6, 0.8)),    # L = max(1, 0.5) = 1
    (0.1, 0.5, 0.5, True, (0.6, 0.8)),    # step_f + C = 1
    (0.0, 10.0, 0.0, True, (3.0, 4.0)),   # clamped to ||d|| = 5: lands on y
    (0.0, 10.0, 0.0, False, (6.0, 8.0)),  # reference behaviour: overshoots to x + 10 d/||d||
    (2.0, 0.0, 0.0, False, (6.0, 8.0)),   # step_a > 1 overshoots too when unclamped
])
def test_move(step_a, step_f, step_c_len, clamp, expected):
    x, y = t(0, 0), t(3, 4)
    move_([x], [y], step_a, step_f, step_c_len, clamp)
    assert torch.allclose(x, t(*expected))


def test_move_toward_origin_and_zero_distance():
    x = t(3, 4)
    move_([x], None, 0.1, 0.0, 0.0, True)  # M2O: x <- (1 - a) x
    assert torch.allclose(x, t(2.7, 3.6))
    y = t(1, 2)
    x = y.clone()
    move_([x], [y], 0.5, 1.0, 0.0, True)  # d = 0: unchanged, no NaN
    assert torch.equal(x, y)


def test_move_merged_weight_and_bias_share_one_direction():
    w, b = t(0, 0), t(0)
    move_([w, b], [t(3, 0), t(4)], 0.0, 1.0, 0.0, True)  # joint ||d|| = 5, L = 1
    assert torch.allclose(w, t(0.6, 0.0)) and torch.allclose(b, t(0.8))
    w, b = t(0, 0), t(0)
    move_([w], [t(3, 0)], 0.0, 1.0, 0.0, True)  # separately each moves a full unit
    move_([b], [t(4)], 0.0, 1.0, 0.0, True)
    assert torch.allclose(w, t(1.0, 0.0)) and torch.allclose(b, t(1.0))


def test_variance_factor_with_eps():
    # docs/algorithm.md, M2M step 3: target 1e-5, current 2e-5, eps 1e-4 -> 0.957, not 0.707
    k = variance_factor(torch.tensor(2e-5), torch.tensor(1e-5), 1e-4)
    assert k.item() == pytest.approx(math.sqrt(1.1e-4 / 1.2e-4), rel=1e-6)
    assert k.item() == pytest.approx(0.9574, abs=1e-4)


def test_variance_correction_rescales_about_the_mean():
    x = t(1, 3)  # mean 2, unbiased variance 2
    VarianceCorrection([x], eps=0.0)(torch.tensor([8.0]))  # k = 2
    assert torch.allclose(x, t(0, 4))
    x = t(1, 3)
    VarianceCorrection([x], eps=1e-4)(torch.tensor([8.0]))
    k = math.sqrt(8.0001 / 2.0001)
    assert torch.allclose(x, t(2 - k, 2 + k), atol=1e-6)
    scalar = t(5)
    VarianceCorrection([scalar], eps=1e-4)(torch.tensor([0.0]))  # single elements stay
    assert scalar.item() == 5
    assert variance(t(1, 3)).item() == 2 and variance(t(7)).item() == 0


def test_variance_correction_skips_single_elements_among_others_without_a_host_sync(device, no_host_sync):
    """Targets are one per tensor of the list; the single-element tensor's target is dropped on the device."""
    x, scalar, z = t(1, 3).to(device), t(5).to(device), t(0, 2, 4).to(device)  # variances 2, -, 4
    correction = VarianceCorrection([x, scalar, z], eps=0.0)
    targets = torch.tensor([8.0, 123.0, 1.0], device=device)
    with no_host_sync():
        correction(targets)
    assert torch.allclose(x.cpu(), t(0, 4)) and torch.allclose(z.cpu(), t(1, 2, 3))
    assert scalar.item() == 5


def test_geodesic_distance():
    assert geodesic(t(1, 0), t(0, 2)).item() == pytest.approx(1.5 * math.pi / 2)  # mean radius x angle
    assert geodesic(t(1, 0), t(-3, 0)).item() == pytest.approx(2 * math.pi)
    assert geodesic(t(1, 1), t(2, 2)).item() == pytest.approx(0, abs=1e-3)
    assert geodesic(t(0, 0), t(1, 0)).item() == 0


def test_distance_and_cosine():
    assert distance(t(1, 1), t(4, 5)).item() == pytest.approx(5)
    assert distance(t(3, 4), None).item() == pytest.approx(5)
    assert cosine(t(1, 0), t(0, 3)).item() == pytest.approx(0)
    assert cosine(t(1, 2), t(-2, -4)).item() == pytest.approx(-1)
    assert cosine(t(0, 0), t(1, 0)).item() == 0


def test_angle_conformal_learning_rates():
    lr = angle_conformal_lr(1e-3, torch.tensor(0.25), torch.tensor(1.0), "var")
    assert lr.item() == pytest.approx(2.5e-4)
    lr = angle_conformal_lr(1e-3, torch.tensor(0.25), torch.tensor(1.0), "std")
    assert lr.item() == pytest.approx(5e-4)
    # docs/algorithm.md, M2O: shrink by 0.999 for 1400 ticks -> lr about 6e-5
    r2 = 0.999 ** (2 * 1400)
    lr = angle_conformal_lr(1e-3, torch.tensor(r2), torch.tensor(1.0), "var")
    assert lr.item() == pytest.approx(6.1e-5, rel=0.01)


def test_rolling_window_stop_rule():
    spec = TrainSpec(loss_threshold=0.5, min_iters=3, max_iters=10)
    assert not should_stop(2, 0.1, spec)   # below the threshold but fewer than min_iters
    assert should_stop(3, 0.5, spec)       # at the threshold after min_iters
    assert not should_stop(3, 0.6, spec)
    assert not should_stop(9, 5.0, spec)
    assert should_stop(10, 5.0, spec)      # max_iters


def test_a_step_a_only_move_is_a_lerp():
    """The search moves by one fused lerp when only step_a is set: the same point as move_."""
    xs, ys = [torch.randn(5, 4), torch.randn(4)], [torch.randn(5, 4), torch.randn(4)]
    lerped = [x.clone() for x in xs]
    move_(xs, ys, 0.02, 0.0, 0.0, True, torch.tensor([0, 0]))
    torch._foreach_lerp_(lerped, ys, 0.02)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(xs, lerped))


def test_train_until_matches_a_plain_loop():
    """Rolling loss, accuracy over every iteration (read in blocks) and the stop iteration are those of
    a plain loop that reads every loss and counts every batch at once."""
    from llpf_core.data import load_dataset
    from llpf_core.registry import build_model
    from llpf_core.train import ACCURACY_BLOCK, BatchStream, train_until

    data = load_dataset("digits")
    spec = TrainSpec(lr=0.05, batch_size=32, loss_threshold=0.0, min_iters=5, max_iters=ACCURACY_BLOCK + 6)

    def setup():
        torch.manual_seed(0)
        model = build_model("mlp", **data.model_kwargs())
        return model, torch.optim.SGD(model.parameters(), lr=spec.lr), BatchStream(
            data, spec.batch_size, torch.Generator().manual_seed(1))

    model, optimizer, stream = setup()
    result = train_until(model, optimizer, stream, spec)
    model, optimizer, stream = setup()
    losses, correct, seen = [], 0, 0
    for _ in range(spec.max_iters):
        x, y = stream.next()
        out = model(x)
        loss = torch.nn.functional.cross_entropy(out, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        correct += int((out.argmax(1) == y).sum())
        seen += len(y)
    assert result.iterations == spec.max_iters
    assert result.loss_rolling == pytest.approx(sum(losses[-5:]) / 5, rel=1e-6)
    assert result.acc_rolling == pytest.approx(correct / seen, rel=1e-9)
