import subprocess
import sys
from pathlib import Path

import pytest

from llpf_core.train import load_recipe, train_mode

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def digits_modes(tmp_path_factory):
    """Two independently trained digits MLP modes (seeds 1 and 2), with the demo's recipe."""
    root = tmp_path_factory.mktemp("modes")
    recipe = load_recipe("mlp-digits")
    return [train_mode("mlp", "digits", seed, root / f"mlp-seed{seed}.safetensors", recipe, "cpu",
                       recipe_name="mlp-digits") for seed in (1, 2)]


def run_cli(*args, env=None, timeout=600, check=False) -> subprocess.CompletedProcess:
    """``python -m llpf_core ARGS`` as a real process, as a user runs it."""
    proc = subprocess.run([sys.executable, "-m", "llpf_core", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc
