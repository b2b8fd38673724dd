"""BatchNorm recalibration before evaluation (product decision 4)."""
import torch
from torch import nn

from llpf_core import build_model, load_dataset
from llpf_core.evaluate import Evaluator


def _bn_stats(model: nn.Module) -> list[torch.Tensor]:
    return [t for m in model.modules() if isinstance(m, nn.BatchNorm2d)
            for t in (m.running_mean, m.running_var)]


def test_bn_recalibration_is_the_cumulative_average_without_a_host_sync(device, no_host_sync):
    """Momentum 1/(k+1) at batch k gives what momentum=None (PyTorch's cumulative average) gives."""
    train = load_dataset("digits").to(device)
    test = load_dataset("digits", "test").to(device)
    kwargs = train.model_kwargs()
    torch.manual_seed(0)
    state = build_model("cnn", **kwargs).to(device).state_dict()
    evaluator = Evaluator(build_model("cnn", **kwargs).to(device), train, test, 0, 0, 7, 32)
    with no_host_sync():
        evaluator.load(state)
    recalibrated = _bn_stats(evaluator.model)

    reference = build_model("cnn", **kwargs).to(device)
    reference.load_state_dict(state)
    for m in reference.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    reference.train()
    with torch.no_grad():
        for chunk in evaluator.bn_idx.split(32):
            reference(train.batch(chunk)[0])
    expected = _bn_stats(reference)

    assert len(evaluator.bn_idx) == 7 * 32 and len(recalibrated) == 6
    for got, want in zip(recalibrated, expected):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    assert all(m.momentum == 0.1 for m in evaluator.model.modules() if isinstance(m, nn.BatchNorm2d))
    assert not evaluator.model.training
