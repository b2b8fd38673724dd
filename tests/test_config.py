"""SearchConfig overrides and validation, presets, layer patterns and data-flow groups."""
import dataclasses
import json

import pytest

from llpf_core import (
    SearchConfig,
    UserError,
    apply_overrides,
    build_model,
    follow_data_flow,
    list_models,
    list_presets,
    load_preset,
    match_layers,
    validate,
)
from llpf_core import default_preset


def test_overrides_are_typed_and_nested():
    cfg = apply_overrides(SearchConfig(), ["ticks=500", "train.lr=0.01", "phases.0.step_a=2e-3",
                                           "device=cpu", "merge_bias=true", "stop_when_loss_exceeds=1.5",
                                           'phases.0.layers=["fc1", "fc2.*"]'])
    assert cfg.ticks == 500 and cfg.train.lr == 0.01 and cfg.phases[0].step_a == 2e-3
    assert cfg.device == "cpu" and cfg.merge_bias is True and cfg.stop_when_loss_exceeds == 1.5
    assert cfg.phases[0].layers == ["fc1", "fc2.*"]
    assert apply_overrides(cfg, ["train.lr=1"]).train.lr == 1.0  # an int is a fine float
    assert apply_overrides(cfg, ["stop_when_loss_exceeds=none"]).stop_when_loss_exceeds is None
    phases = json.dumps([{"start_tick": 0, "layers": ["*"], "step_a": 0.1},
                         {"start_tick": 5, "layers": ["fc*"], "step_f": 0.01}])
    cfg = apply_overrides(SearchConfig(), [f"phases={phases}"])
    assert [p.start_tick for p in cfg.phases] == [0, 5] and cfg.phases[1].step_f == 0.01


@pytest.mark.parametrize("item, message", [
    ("tiks=5", "unknown config key 'tiks'"),
    ("train.learning_rate=0.1", "unknown config key 'train.learning_rate'"),
    ("ticks=abc", "ticks must be of type int"),
    ("ticks=1.5", "ticks must be of type int"),
    ("merge_bias=1", "merge_bias must be of type bool"),
    ("phases.3.step_a=1", "no item '3'"),
    ("ticks", "expects key=value"),
])
def test_bad_overrides_are_user_errors(item, message):
    with pytest.raises(UserError, match=message):
        apply_overrides(SearchConfig(), [item])


@pytest.mark.parametrize("change, message", [
    (dict(ticks=0), "ticks must be positive"),
    (dict(algorithm="m3m"), "unknown algorithm .m3m.; choose one of: m2m, m2o"),
    (dict(eval_every=0), "eval_every must be positive"),
    (dict(checkpoint_every=-1), "checkpoint_every must be positive"),
    (dict(device="tpu"), "device must be"),
])
def test_validation(change, message):
    with pytest.raises(UserError, match=message):
        validate(dataclasses.replace(SearchConfig(), **change))


def test_phase_validation():
    with pytest.raises(UserError, match="all zero"):
        validate(apply_overrides(SearchConfig(), ["phases.0.step_a=0"]))
    with pytest.raises(UserError, match=">= 0"):
        validate(apply_overrides(SearchConfig(), ["phases.0.step_f=-1"]))
    with pytest.raises(UserError, match="max_iters"):
        validate(apply_overrides(SearchConfig(), ["train.max_iters=2", "train.min_iters=3"]))


def test_config_round_trips_through_json():
    cfg = load_preset("lenet5-mnist-m2m-paper")
    assert SearchConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_every_preset_loads_and_matches_its_model():
    presets = list_presets()
    names = {p.name for p in presets}
    assert {"mlp-digits-m2m", "mlp-digits-m2o", "lenet5-fashion-mnist-m2m", "lenet5-mnist-m2m-paper",
            "lenet5-mnist-m2o-paper"} <= names
    for p in presets:
        cfg = load_preset(p.name)
        assert p.description and p.model in list_models()
        names_ = list(dict(build_model(p.model).named_parameters()))
        for i, phase in enumerate(cfg.phases):
            assert match_layers(phase.layers, names_, f"{p.name} phase {i}")
    paper = load_preset("lenet5-mnist-m2m-paper")  # docs/algorithm.md, The paper's configurations
    assert (paper.ticks, paper.phases[0].step_f, paper.phases[0].step_a, paper.merge_bias) == (30000, 1e-3, 0, True)
    assert (paper.train.min_iters, paper.train.max_iters, paper.train.lr, paper.train.batch_size) == (5, 5, 1e-3, 64)


def test_every_architecture_has_a_default_m2m_preset():
    for model in list_models():
        name = default_preset(model, "cifar10", "m2m")
        assert name is not None, model
        assert load_preset(name).algorithm == "m2m"


def test_paper_presets_keep_their_thresholds():
    """The paper's configurations use their loss thresholds as published: no floor from the endpoints."""
    papers = [p.name for p in list_presets() if p.name.endswith("-paper")]
    assert len(papers) >= 7
    for name in papers:
        assert load_preset(name).train.loss_floor_factor == 0, name


def test_default_presets():
    assert default_preset("mlp", "digits", "m2m") == "mlp-digits-m2m"
    assert default_preset("mlp", "digits", "cross_sphere") == "mlp-digits-m2m"
    assert default_preset("mlp", "digits", "m2o") == "mlp-digits-m2o"
    assert default_preset("lenet5", "fashion-mnist", "m2m") == "lenet5-fashion-mnist-m2m"
    assert default_preset("lenet5", "mnist", "m2m") == "lenet5-fashion-mnist-m2m"  # same model, other data
    with pytest.raises(UserError, match="unknown preset"):
        load_preset("nope")


def test_layer_patterns():
    names = ["conv1.weight", "conv1.bias", "fc1.weight", "fc1.bias", "fc10.weight"]
    assert match_layers(["fc1"], names) == ["fc1.weight", "fc1.bias"]  # a module prefix, not fc10
    assert match_layers(["*.bias"], names) == ["conv1.bias", "fc1.bias"]
    assert match_layers(["conv1.weight", "fc10.*"], names) == ["conv1.weight", "fc10.weight"]
    with pytest.raises(UserError, match="'fc2' matches no layer"):
        match_layers(["fc2"], names)


@pytest.mark.parametrize("name", list_models())
def test_follow_data_flow_covers_every_tensor_once(name):
    model = build_model(name)
    groups = follow_data_flow(model)
    flat = [n for g in groups for n in g]
    assert sorted(flat) == sorted(model.state_dict()) and len(flat) == len(set(flat))


def test_follow_data_flow_uses_execution_order():
    import torch
    from torch import nn

    class Reordered(nn.Module):  # registered head-first, but the head runs last
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(4, 2)
            self.body = nn.Linear(64, 4)
            self.input_shape = (1, 8, 8)

        def forward(self, x):
            return self.head(torch.relu(self.body(x.flatten(1))))

    assert follow_data_flow(Reordered()) == [["body.weight", "body.bias"], ["head.weight", "head.bias"]]
    assert follow_data_flow(build_model("lenet5"))[0] == ["conv1.weight", "conv1.bias"]
