"""The fast paths of small models (docs/batched.md, docs/performance.md) compute what the plain ones do:
the MLP's stacked forward, the tick's own SGD, a line of points evaluated in one stacked pass; and an LLPF
search, alone or batched, never loads torch._dynamo (about 2 s of every command's start)."""
import numpy as np
import pytest
import torch
from torch.func import functional_call, vmap

from llpf_core import build_model, load_dataset
from llpf_core.config import TrainSpec
from llpf_core.evaluate import Evaluator
from llpf_core.stacked import Job, StackedTrainer, stack_models
from llpf_core.stackedforward import has_stacked_forward, stacked_forward
from llpf_core.train import BatchStream, PlainSGD, train_until
from tests.test_lazy_imports import modules_after


def _mlps(k: int, seed: int = 0):
    torch.manual_seed(seed)
    models = [build_model("mlp") for _ in range(k)]
    params = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models])
              for n, _ in models[0].named_parameters()}
    return models, params


def test_the_mlps_stacked_forward_is_each_models_forward():
    models, params = _mlps(5)
    x = torch.randn(5, 7, 1, 8, 8)
    own = torch.stack([m(x[k]) for k, m in enumerate(models)])
    assert torch.allclose(stacked_forward(models[0], params, x), own, atol=1e-5)
    shared = torch.randn(7, 1, 8, 8)
    out = stacked_forward(models[0], params, shared, shared_input=True)
    assert torch.allclose(out, torch.stack([m(shared) for m in models]), atol=1e-5)
    # the generic path (torch.func) gives the same
    generic = vmap(lambda p, xi: functional_call(models[0], p, (xi,)), in_dims=(0, None))(params, shared)
    assert torch.allclose(out, generic, atol=1e-5)
    # and the gradients flow to the stacked parameters
    leaves = {n: p.clone().requires_grad_() for n, p in params.items()}
    stacked_forward(models[0], leaves, x).square().sum().backward()
    expected = torch.autograd.grad(models[2](x[2]).square().sum(), list(models[2].parameters()))
    for (name, leaf), grad in zip(leaves.items(), expected):
        assert torch.allclose(leaf.grad[2], grad, atol=1e-4), name


def test_a_subclass_with_its_own_forward_takes_the_generic_path():
    class TanhMLP(type(build_model("mlp"))):
        def forward(self, x):
            x = x.flatten(1)
            for layer in self.layers:
                x = layer(x).tanh()
            return self.head(x)
    models, params = _mlps(3)
    for m in models:
        m.__class__ = TanhMLP
    assert has_stacked_forward(build_model("mlp")) and not has_stacked_forward(models[0])
    x = torch.randn(3, 7, 1, 8, 8)
    own = torch.stack([m(x[k]) for k, m in enumerate(models)])
    assert torch.allclose(stacked_forward(models[0], params, x), own, atol=1e-5)


def test_stacked_training_is_each_models_own_training():
    """Three models stop after 60, 90 and 120 steps: all three stacked at first (the stack itself), then
    gathered; their streams are offset, so epochs end at different steps (short batches padded)."""
    data = load_dataset("digits", "train")
    steps, offsets = [60, 90, 120], [0, 7, 19]

    def stream(k: int) -> BatchStream:
        s = BatchStream(data, 32, torch.Generator().manual_seed(100 + k))
        for _ in range(offsets[k]):
            s.next_indices()
        return s

    def spec(k: int) -> TrainSpec:
        return TrainSpec(lr=0.05, batch_size=32, loss_threshold=0.0, min_iters=steps[k], max_iters=steps[k])
    alone, _ = _mlps(3, seed=5)
    stacked_models, _ = _mlps(3, seed=5)
    expected = [train_until(m, PlainSGD(list(m.parameters()), lr=0.05), stream(k), spec(k))
                for k, m in enumerate(alone)]
    trainer = StackedTrainer(stacked_models[0], stack_models(stacked_models))
    results = trainer.train({k: Job(stream(k), spec(k)) for k in range(3)})
    for k in range(3):
        assert results[k].iterations == expected[k].iterations == steps[k]
        assert abs(results[k].loss_rolling - expected[k].loss_rolling) < 1e-5
        assert abs(results[k].acc_rolling - expected[k].acc_rolling) < 1e-9
        for a, b in zip(stacked_models[k].parameters(), alone[k].parameters()):
            assert torch.allclose(a, b, atol=1e-5), k


@pytest.mark.parametrize("scales", [None, [0.5, 2.0, 1.0, 0.1, 3.0, 1.0]])
def test_the_ticks_sgd_takes_torch_optims_steps(scales):
    """PlainSGD against torch.optim.SGD with one group per parameter, each at lr x its scale."""
    (model,), _ = _mlps(1)
    reference = build_model("mlp")
    reference.load_state_dict(model.state_dict())
    factors = scales or [1.0] * 6
    ours = PlainSGD(list(model.parameters()), lr=0.05)
    if scales:
        ours.scales = scales
    theirs = torch.optim.SGD([{"params": [p], "lr": 0.05 * f} for p, f in zip(reference.parameters(), factors)],
                             lr=0.05)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    for _ in range(5):
        for net, opt in ((model, ours), (reference, theirs)):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    for a, b in zip(model.parameters(), reference.parameters()):
        # the same arithmetic: bit for bit without scales (lr x scale rounds once more with them)
        assert torch.equal(a, b) if scales is None else torch.allclose(a, b, rtol=1e-6, atol=1e-7)
    assert all(p.grad is not None for p in model.parameters())
    ours.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_a_continuity_line_in_stacked_passes_equals_point_by_point_and_the_baseline_is_exact():
    (a, b), _ = _mlps(2, seed=3)
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    evaluator = Evaluator(build_model("mlp"), train, test, 300, 0, 0, 32)
    assert evaluator.line_stacked
    alphas = [i / 20 for i in range(21)]  # more than one stacked pass (LINE_POINTS_PER_PASS)
    sa, sb = a.state_dict(), b.state_dict()
    idx = torch.arange(0, 1000, 3)
    continuity = evaluator.line(sa, sb, alphas, idx)
    assert [set(r) for r in continuity] == [{"alpha", "loss", "acc"}] * len(alphas)
    for row in continuity:
        evaluator.load({k: torch.lerp(sa[k], sb[k], row["alpha"]) for k in sa})
        loss, acc = evaluator.loss_acc(train, idx).tolist()
        assert np.isclose(row["loss"], loss, rtol=1e-5, atol=1e-6) and np.isclose(row["acc"], acc), row["alpha"]
    # the baseline's points give exactly what evaluate gives them: a linear path's max is the barrier
    for row in evaluator.line(sa, sb, [0.0, 0.5, 1.0]):
        point = evaluator.evaluate({k: torch.lerp(sa[k], sb[k], row["alpha"]) for k in sa})
        assert {k: row[k] for k in point} == point


def test_an_llpf_search_alone_or_batched_never_loads_torch_dynamo(digits_modes, tmp_path):
    a, b = (str(m.path) for m in digits_modes)
    loaded = modules_after(
        "from llpf_core import Pair, resolve_config, run_batched, run_search\n"
        "cfg = resolve_config('mlp', 'digits', 'm2m', overrides=['ticks=3', 'device=cpu']).config\n"
        f"run_search({a!r}, {b!r}, cfg, {str(tmp_path / 'alone')!r})\n"
        f"run_batched([Pair({a!r}, {b!r}, cfg, {str(tmp_path / 'p0')!r}), Pair({b!r}, {a!r}, cfg, "
        f"{str(tmp_path / 'p1')!r})])")
    assert "torch" in loaded and "torch._dynamo" not in loaded
    assert (tmp_path / "alone" / "path.csv").exists() and (tmp_path / "p1" / "path.csv").exists()
