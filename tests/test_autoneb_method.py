"""The ``autoneb`` method and ``curve.repair`` through the CLI and the run driver (issue 24), on digits MLPs
of seeds no other test uses (7101, 7102)."""
import json
import threading

import pytest
import torch

from llpf_core import build_model, load_mode, load_recipe, load_run, resolve_config, run_search, save_mode, train_mode
from llpf_core.modefile import ModeMeta
from llpf_core.runfolder import RunWriter

from tests.conftest import run_cli

SHORT = [f"autoneb.cycles.{i}.steps=40" for i in range(5)]  # 200 SGD steps, same schedule shape


@pytest.fixture(scope="module")
def neb_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("neb-modes")
    recipe = load_recipe("mlp-digits")
    return [train_mode("mlp", "digits", seed, root / f"mlp-{seed}.safetensors", recipe, "cpu",
                       recipe_name="mlp-digits") for seed in (7101, 7102)]


def test_autoneb_through_connect_ends_at_a_and_b_below_a_third_of_the_barrier(tmp_path, neb_pair):
    a, b = neb_pair
    out = tmp_path / "neb"
    run_cli("connect", a.path, b.path, "--algorithm", "autoneb", "--device", "cpu", "--quiet", "--out", out,
            check=True)
    run = load_run(out)
    points = run.points()
    first, last = (load_mode(points[i][1]).model.state_dict() for i in (0, -1))
    for k, v in a.model.state_dict().items():
        assert torch.equal(first[k], v), k
    for k, v in b.model.state_dict().items():
        assert torch.equal(last[k], v), k
    s, neb = run.info["summary"], run.info["autoneb"]
    assert s["path_max_train_loss"] <= s["barrier"] / 3, s
    assert s["sgd_steps"] == 750 == neb["sgd_steps"] and neb["cycles"] == 5
    assert len(points) == neb["pivots"] == len(run.path_table) and neb["pivots"] > 5  # pivots were inserted
    assert "t" not in run.path_table  # no curve parameter: positions only


def test_a_stopped_autoneb_run_resumes_to_the_uninterrupted_path(tmp_path, neb_pair, monkeypatch):
    a, b = neb_pair
    cfg = resolve_config("mlp", "digits", "autoneb", overrides=[*SHORT, "checkpoint_every=25"], device="cpu").config
    whole = run_search(a.path, b.path, cfg, tmp_path / "whole")
    stop, save = threading.Event(), RunWriter.save_checkpoint

    def save_then_stop(writer, tensors, info):  # Stop right after the checkpoint at step 50 (cycle 1, after
        save(writer, tensors, info)  # its insertion)
        if info["tick"] == 50:
            stop.set()

    monkeypatch.setattr(RunWriter, "save_checkpoint", save_then_stop)
    cut = run_search(a.path, b.path, cfg, tmp_path / "cut", stop_event=stop)
    monkeypatch.setattr(RunWriter, "save_checkpoint", save)
    assert cut.status == "stopped" and not cut.points()
    info = json.loads((tmp_path / "cut" / "checkpoint.json").read_text())
    assert (info["tick"], info["cycle"]) == (50, 1)
    resumed = run_search(None, None, None, tmp_path / "cut", resume=True)
    assert resumed.status == "finished" and resumed.info["resumed_from_step"] == 50
    assert resumed.info["autoneb"]["pivots"] == whole.info["autoneb"]["pivots"]
    for (_, f1), (_, f2) in zip(whole.points(), resumed.points(), strict=True):
        s1, s2 = load_mode(f1).model.state_dict(), load_mode(f2).model.state_dict()
        for k in s1:
            torch.testing.assert_close(s2[k], s1[k], rtol=1e-5, atol=1e-6)
    assert list(resumed.path_table["train_loss"]) == pytest.approx(list(whole.path_table["train_loss"]), rel=1e-4)


def test_autoneb_settings_are_checked_in_one_line(tmp_path, neb_pair):
    a, b = neb_pair
    proc = run_cli("connect", a.path, b.path, "--algorithm", "autoneb", "--set", "autoneb.cycles.0.lr=0",
                   "--out", tmp_path / "bad")
    assert proc.returncode == 2 and "autoneb: bad cycle" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "bad").exists()


def test_repair_lowers_the_aligned_line_and_keeps_its_ends(tmp_path, neb_pair):
    a, b = neb_pair
    runs = {}
    for repair in (False, True):
        out = tmp_path / f"reb-{repair}"
        run_cli("connect", a.path, b.path, "--algorithm", "rebasin", "--set", "curve.points=5", "--set",
                f"curve.repair={json.dumps(repair)}", "--device", "cpu", "--quiet", "--out", out, check=True)
        runs[repair] = load_run(out)
    plain, repaired = runs[False].path_table, runs[True].path_table
    assert list(repaired["t"]) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert repaired["train_loss"][2] < plain["train_loss"][2]  # the midpoint, REPAIRed
    assert repaired["train_loss"][0] == plain["train_loss"][0] and repaired["train_loss"][4] == plain["train_loss"][4]
    assert runs[True].info["repair"] == "fuse"


def test_repair_refuses_a_layernorm_model_before_any_work(tmp_path):
    for seed in (1, 2):
        save_mode(tmp_path / f"c{seed}.safetensors", build_model("cct7_3x1_32"),
                  ModeMeta(model="cct7_3x1_32", model_kwargs={}, dataset="cifar10", seed=seed))
    proc = run_cli("connect", tmp_path / "c1.safetensors", tmp_path / "c2.safetensors", "--algorithm", "linear",
                   "--set", "curve.repair=true", "--out", tmp_path / "run")
    assert proc.returncode == 2 and "REPAIR cannot handle LayerNorm" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_the_search_page_offers_autoneb_with_its_scalar_settings(tmp_path, neb_pair, monkeypatch):
    import shutil
    import sys

    from streamlit.testing.v1 import AppTest

    from tests.conftest import REPO
    sys.path.insert(0, str(REPO / "app"))
    (tmp_path / "modes").mkdir()
    for mode in neb_pair:
        shutil.copy(mode.path, tmp_path / "modes" / mode.path.name)
    monkeypatch.setenv("LLPF_HOME", str(tmp_path))
    at = AppTest.from_file(str(REPO / "app" / "views" / "search.py"), default_timeout=60).run()
    at.radio(key="algorithm").set_value("autoneb").run()
    assert not at.exception and not at.error
    at.number_input(key="autoneb_pivots").set_value(5).run()
    assert not at.exception and not at.error
    keys = {n.key for n in at.number_input}
    assert {"autoneb_pivots", "autoneb_dense_samples", "autoneb_insert_threshold"} <= keys
    assert not any(k and k.startswith("autoneb_cycles") for k in keys | {t.key for t in at.text_input})
