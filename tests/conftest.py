import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from llpf_core.train import load_recipe, train_mode

REPO = Path(__file__).resolve().parent.parent
# The device the engine's tests train on: the CPU, or the GPU when bench/gpu_check.py runs them once there
# (LLPF_TEST_DEVICE=cuda). Presets' device "auto" picks the GPU by itself wherever one is visible.
TEST_DEVICE = os.environ.get("LLPF_TEST_DEVICE", "cpu")


@pytest.fixture(scope="session")
def device() -> torch.device:
    """``LLPF_TEST_DEVICE`` (default cpu); asking for CUDA where there is none fails every test using it."""
    dev = torch.device(TEST_DEVICE)
    if dev.type == "cuda":
        assert torch.cuda.is_available(), f"LLPF_TEST_DEVICE={TEST_DEVICE} but no CUDA GPU is visible"
    return dev


@pytest.fixture
def no_host_sync(device):
    """A context in which a CUDA operation that waits for the device raises (a no-op on the CPU)."""
    @contextlib.contextmanager
    def context():
        if device.type != "cuda":
            yield
            return
        torch.cuda.synchronize(device)
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return context


@pytest.fixture(scope="session")
def digits_modes(tmp_path_factory, device):
    """Two independently trained digits MLP modes (seeds 1 and 2), with the demo's recipe."""
    root = tmp_path_factory.mktemp("modes")
    recipe = load_recipe("mlp-digits")
    return [train_mode("mlp", "digits", seed, root / f"mlp-seed{seed}.safetensors", recipe, str(device),
                       recipe_name="mlp-digits") for seed in (1, 2)]


def workspace_with(modes, root: Path) -> list[Path]:
    """``root`` as a workspace holding copies of ``modes`` in its modes/ folder; the copies' paths, sorted."""
    (root / "modes").mkdir(parents=True, exist_ok=True)
    for mode in modes:
        shutil.copy(mode.path, root / "modes" / mode.path.name)
    return sorted((root / "modes").glob("*.safetensors"))


def demo_pair_in(modes, workspace: Path) -> list[Path]:
    """The demo's pair in ``workspace``/modes under the names the demo gives it (mlp-digits-seed1 and -seed2,
    which the dashboard's demo reuses): copies of ``modes``, the session's digits_modes. Those are trained as
    `llpf train --model mlp --dataset digits --seed N` trains (the mlp-digits recipe; the same weights, only
    the creation time differs), once per session instead of once per test."""
    (workspace / "modes").mkdir(parents=True, exist_ok=True)
    paths = []
    for mode in modes:
        path = workspace / "modes" / f"mlp-digits-seed{mode.meta.seed}.safetensors"
        shutil.copy(mode.path, path)
        paths.append(path)
    return paths


def run_cli(*args, env=None, timeout=600, check=False) -> subprocess.CompletedProcess:
    """``python -m llpf_core ARGS`` as a real process, as a user runs it."""
    proc = subprocess.run([sys.executable, "-m", "llpf_core", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def llpf_in_process(*args) -> None:
    """``llpf ARGS`` run in this process (``llpf_core.cli.main``): the command's own code path without the
    process start (about 3 s of imports), for tests whose claim is not about the process boundary."""
    from llpf_core.cli import main
    code = main([*map(str, args), "--quiet"])
    assert code == 0, f"llpf {' '.join(map(str, args))}: exit {code}"


def checkpoint_tick(out: Path) -> int:
    """The tick of a run folder's last checkpoint (-1 before the first). Tests that kill or stop a run
    trigger on it: it is written at its tick, while CSV rows can lag by up to 0.5 s."""
    try:
        return json.loads((out / "checkpoint.json").read_text())["tick"]
    except (FileNotFoundError, json.JSONDecodeError):  # checkpoint.json is written atomically too
        return -1


def plotly_array(value) -> np.ndarray:
    """A trace's array as sent to the browser: a plain list, or plotly's base64 ``{dtype, bdata, shape}``."""
    if isinstance(value, dict) and "bdata" in value:
        out = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        return out.reshape([int(n) for n in value["shape"].split(",")]) if "shape" in value else out
    return np.asarray(value)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def streamlit_server(command: list[str], port: int, env: dict, log: Path, cwd: Path = REPO, wait_s: float = 120):
    """A real dashboard server (``command`` listens on ``port``): yields its URL once its health check
    answers; ends it and every process it started (its own session) when the block ends."""
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + wait_s  # a generous bound on a loaded machine, not a speed test
            while True:
                try:
                    if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                        break
                except OSError:
                    pass
                assert proc.poll() is None and time.time() < deadline, Path(log).read_text()
                time.sleep(0.5)
            yield url
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
