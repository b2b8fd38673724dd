"""The loss threshold that follows the endpoints, its run.json record, and cross_sphere between
modes trained with different weight decay (issue 18, item 1)."""
import dataclasses
import json
import threading

import pytest

from llpf_core import SearchConfig, TrainSpec, UserError, apply_overrides, load_preset, run_search, validate
from llpf_core.checks import run_summary
from llpf_core.modefile import load_mode, save_mode
from llpf_core.thresholds import endpoint_train_loss, threshold_record, threshold_used
from llpf_core.train import load_recipe, train_mode


def test_threshold_used_is_the_configured_value_raised_to_the_endpoint_floor():
    spec = TrainSpec(loss_threshold=0.01, loss_floor_factor=1.1)
    assert threshold_used(spec, 0.0006) == 0.01  # modes of low loss: the configured value
    assert threshold_used(spec, 0.05) == pytest.approx(0.055)  # a weight-decay mode: the floor
    assert threshold_used(dataclasses.replace(spec, loss_floor_factor=0.0), 0.05) == 0.01
    assert threshold_record(spec, 0.05) == {"configured": 0.01, "loss_floor_factor": 1.1,
                                            "endpoint_train_loss": 0.05, "used": pytest.approx(0.055)}


def test_endpoint_loss_comes_from_the_metadata_else_from_an_evaluation(digits_modes):
    mode = digits_modes[0]
    assert endpoint_train_loss(mode, lambda m: 99.0) == mode.meta.metrics["train_loss"]
    bare = dataclasses.replace(mode, meta=dataclasses.replace(mode.meta, metrics={}))
    assert endpoint_train_loss(bare, lambda m: 0.25) == 0.25


def test_an_explicit_loss_threshold_is_used_as_given():
    cfg = apply_overrides(SearchConfig(), ["train.loss_threshold=0.04"])
    assert cfg.train.loss_threshold == 0.04 and cfg.train.loss_floor_factor == 0.0
    assert cfg.bridge.train.loss_floor_factor == SearchConfig().bridge.train.loss_floor_factor
    cfg = apply_overrides(SearchConfig(), ["bridge.train.loss_threshold=0.04", "bridge.train.loss_floor_factor=2"])
    assert cfg.bridge.train.loss_floor_factor == 2.0 and cfg.train.loss_floor_factor == 1.1
    with pytest.raises(UserError, match="train.loss_floor_factor must be >= 0"):
        validate(apply_overrides(SearchConfig(), ["train.loss_floor_factor=-1"]))


@pytest.fixture(scope="module")
def weight_decay_mode(tmp_path_factory):
    """A digits MLP trained with weight decay 5e-3: train loss about 0.05, fifty times the others'."""
    recipe = dataclasses.replace(load_recipe("mlp-digits"), weight_decay=5e-3)
    return train_mode("mlp", "digits", 2, tmp_path_factory.mktemp("wd") / "wd2.safetensors", recipe, "cpu",
                      recipe_name="mlp-digits")


def test_run_json_records_the_thresholds_used_and_resume_reuses_them(digits_modes, weight_decay_mode, tmp_path):
    cfg = dataclasses.replace(load_preset("mlp-digits-m2m"), ticks=30, checkpoint_every=1000)
    stop = threading.Event()

    def on_tick(event):
        if event.tick == 10:
            stop.set()

    out = tmp_path / "run"
    run = run_search(digits_modes[0], weight_decay_mode, cfg, out, on_tick=on_tick, stop_event=stop)
    assert run.status == "stopped"
    end_loss = weight_decay_mode.meta.metrics["train_loss"]
    record = run.info["loss_thresholds"]
    assert list(record) == ["train"]  # m2m has no bridge
    assert record["train"] == {"configured": 0.01, "loss_floor_factor": 1.1, "endpoint_train_loss": end_loss,
                               "used": pytest.approx(1.1 * end_loss)}
    # Resume trains with the recorded value, not a recomputed one: a recorded 10 stops every tick
    # after min_iters.
    info = json.loads((out / "run.json").read_text())
    info["loss_thresholds"]["train"]["used"] = 10.0
    (out / "run.json").write_text(json.dumps(info))
    run = run_search(None, None, None, out, resume=True)
    m = run.metrics
    assert run.status == "finished" and list(m["tick"]) == list(range(31))
    assert (m[m.tick > 10]["iterations"] == cfg.train.min_iters).all()
    assert run.info["loss_thresholds"]["train"]["used"] == 10.0


def test_a_bridge_that_runs_out_of_ticks_says_so(digits_modes, weight_decay_mode, tmp_path):
    cfg = apply_overrides(load_preset("mlp-digits-m2m"), ["algorithm=cross_sphere", "bridge.ticks=5", "ticks=5"])
    run = run_search(digits_modes[0], weight_decay_mode, cfg, tmp_path / "run")
    sphere = run.info["sphere"]
    assert sphere["stage"] == "to_vs" and sphere["ticks"] == 5 and not sphere["reached"]
    assert sphere["ratio"] > 1 + cfg.bridge.tolerance
    assert sphere["farthest_layer"] in sphere["note"] and "raise the stage's ticks or step_a" in sphere["note"]


def test_cross_sphere_reaches_a_weight_decay_mode_with_the_default_preset(digits_modes, weight_decay_mode,
                                                                          tmp_path):
    """Before the threshold followed the endpoints, the bridge used all 300 ticks off B's sphere and
    M2M stalled at distance_rel 0.04, every tick spending max_iters."""
    cfg = dataclasses.replace(load_preset("mlp-digits-m2m"), algorithm="cross_sphere")
    run = run_search(digits_modes[0], weight_decay_mode, cfg, tmp_path / "run")
    sphere = run.info["sphere"]
    assert sphere["reached"] and sphere["ticks"] < cfg.bridge.ticks, sphere
    s = run_summary(run)
    assert s["final_distance_rel"] <= 0.02, s
    assert s["path_max_train_loss"] <= min(0.08, s["barrier"] / 3), s
    m2m = run.metrics[run.metrics.stage == "m2m"]
    assert m2m["iterations"].mean() < cfg.train.max_iters / 2  # training no longer chases 0.01


def test_saved_mode_without_metrics_is_evaluated(digits_modes, weight_decay_mode, tmp_path):
    """An end mode without metrics.train_loss (imported from elsewhere) is evaluated at the run's start."""
    mode = weight_decay_mode
    path = tmp_path / "bare.safetensors"
    save_mode(path, mode.model.state_dict(), dataclasses.replace(mode.meta, metrics={}))
    cfg = dataclasses.replace(load_preset("mlp-digits-m2m"), ticks=2)
    run = run_search(digits_modes[0], load_mode(path), cfg, tmp_path / "run")
    measured = run.info["loss_thresholds"]["train"]["endpoint_train_loss"]
    assert measured == pytest.approx(mode.meta.metrics["train_loss"], rel=1e-4)
