"""Every registered CIFAR-size architecture: parameter counts, a training step, data-flow groups, and a
few LLPF ticks on synthetic 32x32x3 data. Counts come from shared/docs/zoo-reference.md."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from llpf_core import (
    ContinuitySpec,
    Phase,
    SearchConfig,
    TrainSpec,
    apply_overrides,
    build_model,
    follow_data_flow,
    list_models,
    load_preset,
    load_run,
    run_search,
    save_mode,
)
from llpf_core.modefile import ModeMeta

# name: (trainable parameters, state-dict entries)
REFERENCE = {
    "lenet5": (61_706, 10),
    "resnet18": (11_173_962, 122),
    "vgg11": (9_231_114, 58),
    "densenet121": (6_956_298, 722),
    "efficientnet_b0": (3_599_686, 360),
    "regnet_x_200mf": (2_321_946, 266),
    "dla": (16_291_386, 260),
    "mobilenet_v2": (2_237_770, 320),
    "shufflenet": (960_706, 296),
    "shufflenet_v2": (1_263_854, 338),
    "cct7_3x1_32": (3_760_139, 85),
}
CIFAR_MODELS = [m for m in REFERENCE if m != "lenet5"]


def test_every_reference_architecture_is_registered():
    assert set(REFERENCE) <= set(list_models())


@pytest.mark.parametrize("name", list(REFERENCE))
def test_parameter_count_matches_the_reference(name):
    model = build_model(name)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    expected, entries = REFERENCE[name]
    assert abs(params - expected) <= 0.01 * expected, (params, expected)
    if name != "efficientnet_b0":  # its port drops an unused conv+BN of the upstream (zoo-reference.md)
        assert len(model.state_dict()) == entries


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_forward_backward_and_data_flow_groups(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=100)
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 100)
    F.cross_entropy(out, torch.tensor([1, 2])).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    groups = follow_data_flow(model)
    flat = [n for g in groups for n in g]
    assert sorted(flat) == sorted(model.state_dict()) and len(flat) == len(set(flat))


def _random_modes(name, dataset, tmp_path, **kwargs):
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = build_model(name, **kwargs)
        path = tmp_path / f"{name}-{seed}.safetensors"
        save_mode(path, model, ModeMeta(model=name, model_kwargs=kwargs, dataset=dataset, seed=seed))
        paths.append(path)
    return paths


# Few samples everywhere: the evaluations of these large models dominate the ticks' time on a CPU.
SMALL = dict(train=TrainSpec(lr=1e-3, batch_size=8, loss_threshold=0.0, min_iters=1, max_iters=1),
             eval_samples=8, eval_every=1, bn_recal_batches=1, save_every=2, checkpoint_every=2, baseline_points=2,
             continuity=ContinuitySpec(points=2, samples=8, every=1), device="cpu")


@pytest.mark.slow
@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_two_m2m_and_two_m2o_ticks_on_synthetic_data(name, tmp_path):
    a, b = _random_modes(name, "synthetic", tmp_path)
    m2m = run_search(a, b, SearchConfig(algorithm="m2m", ticks=2, phases=[Phase(step_a=0.1)], **SMALL),
                     tmp_path / "m2m")
    m2o = run_search(a, "origin", SearchConfig(algorithm="m2o", ticks=2, phases=[Phase(step_a=0.1)], **SMALL),
                     tmp_path / "m2o")
    for run in (m2m, m2o):
        run = load_run(run.path)
        assert run.status == "finished"
        assert list(run.metrics["tick"]) == [0, 1, 2]
        assert run.metrics["train_loss"].notna().all()
        assert [t for t, _ in run.points()] == [0, 2]
        assert set(run.layers["layer"]) == set(dict(build_model(name).named_parameters()))
    assert m2m.metrics["distance_rel"].iloc[-1] < 1


@pytest.mark.slow
def test_resnet18_on_fashion_mnist_with_the_paper_phases(tmp_path):
    """The paper's six-phase ResNet-18 structure, one tick per phase, on Fashion-MNIST padded to 32x32x3."""
    a, b = _random_modes("resnet18", "fashion-mnist-rgb32", tmp_path, num_classes=10, in_channels=3,
                         image_size=32)
    cfg = load_preset("resnet18-cifar10-m2m-paper")
    cfg = dataclasses.replace(cfg, ticks=6, phases=[dataclasses.replace(p, start_tick=i, step_a=0.1)
                                                     for i, p in enumerate(cfg.phases)], **SMALL)
    run = run_search(a, b, apply_overrides(cfg, ["eval_samples=32"]), tmp_path / "run")
    assert run.status == "finished"
    assert run.metrics["phase"].tolist() == ["m2m:0", "m2m:0", "m2m:1", "m2m:2", "m2m:3", "m2m:4", "m2m:5"]
    rel = run.layers.query("tick == 2").set_index("layer")["distance_rel"]
    # Random inits share their BatchNorm parameters (ones and zeros), so compare conv and fc weights.
    moved = rel[["conv1.weight", "fc.weight"]]  # phases 1 and 2: 0.9 * 0.9
    waiting = rel[rel.index.str.match(r"layer4\..*conv.*weight")]  # phase 1 only: 0.9 (back in phase 6)
    assert waiting.min() > moved.max() + 0.03, (waiting.min(), moved.max())
