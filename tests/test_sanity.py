"""Modes that learned nothing are named loudly (issue 26, item 3), the generic recipe learns, and a mistyped
model is named at once."""
import math
from concurrent.futures import ThreadPoolExecutor

import torch
from safetensors.torch import save_file

from llpf_core import GENERIC_RECIPE, ModeMeta, build_model, chance_warning, default_recipe, load_mode

from conftest import run_cli


def meta(acc: float, loss: float = 1.0, classes: int = 10) -> ModeMeta:
    return ModeMeta(model="mlp", model_kwargs={"num_classes": classes}, dataset="digits",
                    metrics={"train_loss": loss, "train_acc": acc, "test_loss": loss, "test_acc": acc})


def test_chance_warning_names_the_numbers_and_spares_modes_that_learned():
    message = chance_warning(meta(0.104, 2.31), "a.safetensors")
    assert "a.safetensors is at chance level" in message and "10.4%" in message and "10.0%" in message
    assert "2.310" in message and "ln 10 = 2.303" in message
    assert chance_warning(meta(0.185)) is not None  # below a tenth of the way from 10 % to 100 %
    assert chance_warning(meta(0.48)) is None  # poor, but it learned something
    assert chance_warning(meta(0.53, classes=2)) is not None and chance_warning(meta(0.6, classes=2)) is None
    assert chance_warning(meta(0.12, classes=100)) is None
    assert "non-finite train loss (nan)" in chance_warning(meta(0.9, math.nan))
    assert chance_warning(ModeMeta(model="mlp", model_kwargs={}, dataset="digits")) is None  # no metrics: no verdict


def test_a_pair_without_a_tuned_recipe_gets_the_generic_one():
    assert default_recipe("mlp", "digits") == "mlp-digits"
    assert default_recipe("mlp", "fashion-mnist") == GENERIC_RECIPE  # not the digits recipe, which sat at chance
    assert default_recipe("resnet18", "folder:/x") == GENERIC_RECIPE


def test_generic_recipe_learns_mlp_on_fashion_mnist_and_says_so(tmp_path):
    """The issue's case: mlp on fashion-mnist, seed 42, ended at 10 % with the digits recipe."""
    out = tmp_path / "fm.safetensors"
    proc = run_cli("train", "--model", "mlp", "--dataset", "fashion-mnist", "--seed", 42, "--epochs", 1,
                   "--out", out, "--quiet", check=True)
    assert "no tuned recipe for mlp on fashion-mnist: the generic one (1 epochs of adamw, lr 0.001" in proc.stderr
    assert "chance" not in proc.stderr
    mode = load_mode(out)
    assert mode.meta.train_config["recipe"] == GENERIC_RECIPE and mode.meta.metrics["train_acc"] > 0.5


def test_train_connect_and_import_warn_about_a_chance_level_mode(tmp_path):
    untrained, good = tmp_path / "untrained.safetensors", tmp_path / "good.safetensors"
    torch.manual_seed(1)
    state = tmp_path / "state.safetensors"
    save_file(build_model("mlp").state_dict(), state)
    # The two trainings and the import are independent commands: they run side by side (2 cores).
    with ThreadPoolExecutor(2) as pool:
        trained = pool.submit(run_cli, "train", "--model", "mlp", "--seed", 1, "--lr", 1e-9, "--epochs", 1,
                              "--out", untrained, "--quiet", check=True)
        trained_good = pool.submit(run_cli, "train", "--model", "mlp", "--seed", 2, "--epochs", 2, "--out", good,
                                   "--quiet", check=True)
        imported = pool.submit(run_cli, "import", state, "--model", "mlp", "--dataset", "digits",
                               "--out", tmp_path / "imp.safetensors", check=True)
        proc, good_proc, import_proc = trained.result(), trained_good.result(), imported.result()

    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"warning: {untrained} is at chance level: ")
    assert "train accuracy 4.5% where guessing gives 10.0% (10 classes)" in proc.stderr
    assert "warning" not in good_proc.stderr
    proc = run_cli("connect", good, untrained, "--out", tmp_path / "run", "--ticks", 2, check=True)
    lines = proc.stderr.splitlines()
    warned = next(i for i, line in enumerate(lines) if "is at chance level" in line)
    assert str(untrained) in lines[warned] and warned < next(i for i, line in enumerate(lines) if "connecting" in line)
    assert "imp.safetensors is at chance level" in import_proc.stderr


def test_a_diverged_training_says_the_mode_learned_nothing(tmp_path):
    out = tmp_path / "lr50.safetensors"
    proc = run_cli("train", "--model", "mlp", "--seed", 1, "--lr", 50, "--out", out, "--quiet")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and not out.exists()
    assert "diverged" in proc.stderr and "learned nothing" in proc.stderr and "lr 50 is too high" in proc.stderr


def test_a_mistyped_sweep_model_is_named_with_the_known_ones(tmp_path):
    proc = run_cli("sweep", "--model", "mpl", "--pairs", 1, "--out", tmp_path / "sweep")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and not (tmp_path / "sweep").exists()
    assert proc.stderr.startswith("error: unknown model 'mpl'; choose one of: ") and "mlp" in proc.stderr
