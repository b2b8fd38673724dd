"""CLI user errors (docs/cli.md, docs/formats.md), driven as real ``python -m llpf_core`` subprocesses.

A user error exits with code 2 and prints exactly one line on stderr (``error: ...``), never a
traceback, and the failing command neither creates nor damages files. Pickles are never unpickled.

To stay fast, the error commands are independent of each other and run concurrently (one process per
core) in a module fixture; each case then has its own test. The workspace is snapshotted (every file's
bytes, every folder) before and after, so a failing command that writes anything is caught.
"""
import dataclasses
import hashlib
import json
import os
import pathlib
import pickle
import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from llpf_core import ModeMeta, build_model, save_mode

REPO = Path(__file__).resolve().parent.parent
COMMANDS = ("train", "connect", "check", "inspect", "independence", "demo", "presets")  # docs/cli.md


# --- helpers ----------------------------------------------------------------------------------------

@dataclasses.dataclass
class Result:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        return (f"$ python -m llpf_core {' '.join(self.args)}\nexit {self.returncode}\n"
                f"stdout: {self.stdout!r}\nstderr: {self.stderr!r}")


def cli_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["LLPF_HOME"] = str(home)
    env["CUDA_VISIBLE_DEVICES"] = ""  # no GPU, whatever machine runs the tests
    env["OMP_NUM_THREADS"] = "1"  # the commands run side by side; keep them from oversubscribing the cores
    return env


def run_cli(args, env: dict[str, str], timeout: float = 300) -> Result:
    args = [str(a) for a in args]
    p = subprocess.run([sys.executable, "-m", "llpf_core", *args], cwd=REPO, env=env,
                       capture_output=True, timeout=timeout)
    # Decoded by hand: text mode would turn a progress bar's "\r" into "\n" and hide it.
    return Result(args, p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace"))


def run_many(commands: dict[str, list], env: dict[str, str]) -> dict[str, Result]:
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        futures = {name: pool.submit(run_cli, args, env) for name, args in commands.items()}
        return {name: f.result() for name, f in futures.items()}


def snapshot(root: Path) -> dict[str, str]:
    """Every folder and file under ``root``: relative path -> sha256 of the bytes ("dir" for folders)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def assert_user_error(r: Result, *fragments: str) -> str:
    """Exit 2, exactly one line on stderr starting with 'error: ', no traceback anywhere."""
    assert r.returncode == 2, r.describe()
    assert "Traceback" not in r.stderr + r.stdout, r.describe()
    lines = r.stderr.splitlines()  # splits on "\r" too, so a progress bar counts as a line
    assert len(lines) == 1, f"expected exactly one line on stderr\n{r.describe()}"
    assert r.stderr.endswith("\n"), r.describe()
    line = lines[0]
    assert line.startswith("error: "), r.describe()
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in the error line\n{r.describe()}"
    return line


class UnpickleMarker:
    """Unpickling this object calls ``Path.touch(marker)``: proof that something was unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def write_pickle(path: Path, marker: Path, state: dict) -> None:
    """A torch.save checkpoint (a zip of pickles) with a real state dict and the marker payload."""
    torch.save({"state_dict": state, "payload": UnpickleMarker(marker)}, path)


# --- fixtures ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A workspace with two digits MLP modes and a digits CNN mode, trained as `train --epochs 2` (the MLPs) and
    `train --epochs 1` (the CNN) train them, in this process: the modes are inputs here, the commands under test
    are the failing ones below."""
    from llpf_core.train import default_recipe, load_recipe, train_mode
    root = tmp_path_factory.mktemp("cli_errors")
    home = root / "home"
    home.mkdir()
    env = cli_env(home)
    modes = root / "modes"
    paths = {"a": modes / "mlp-seed1.safetensors", "b": modes / "mlp-seed2.safetensors",
             "cnn": modes / "cnn-seed1.safetensors"}
    for name, model, seed, epochs in (("a", "mlp", 1, 2), ("b", "mlp", 2, 2), ("cnn", "cnn", 1, 1)):
        recipe_name = default_recipe(model, "digits")
        recipe = dataclasses.replace(load_recipe(recipe_name), epochs=epochs)
        train_mode(model, "digits", seed, paths[name], recipe, "cpu", recipe_name=recipe_name)
        assert paths[name].is_file()
    return dataclasses.make_dataclass("Workspace", ["root", "home", "env", "a", "b", "cnn"])(
        root, home, env, paths["a"], paths["b"], paths["cnn"])


CASES = ("corrupt", "truncated", "empty", "pickle", "no_llpf_metadata", "different_architectures",
         "different_class_counts", "classes_do_not_fit_the_dataset", "missing_tensor", "wrong_shape",
         "unknown_preset", "unknown_set_key", "wrong_type_set_value", "zero_step", "pattern_matches_nothing",
         "zero_eval_every", "negative_save_every", "zero_checkpoint_every",
         "missing_dataset", "missing_data_root", "cuda_without_gpu", "existing_run_folder", "out_under_a_file")


@pytest.fixture(scope="module")
def errors(ws):
    """Prepare every bad input, run every failing command concurrently, and snapshot before and after."""
    bad = ws.root / "bad"
    bad.mkdir()
    out = ws.root / "runs"  # run folders that must never be created
    good = ws.a.read_bytes()

    (bad / "corrupt.safetensors").write_bytes(random.Random(0).randbytes(4096))
    (bad / "truncated.safetensors").write_bytes(good[: len(good) // 2])
    (bad / "empty.safetensors").write_bytes(b"")
    state = load_file(ws.a)
    write_pickle(bad / "pickle.safetensors", bad / "UNPICKLED", state)
    # The same payload as a bare pickle, to show that unpickling it does create its marker.
    (bad / "control.pkl").write_bytes(pickle.dumps(UnpickleMarker(ws.root / "CONTROL_UNPICKLED")))
    save_file(state, bad / "plain.safetensors", metadata={"format": "pt"})  # real weights, no llpf.* keys
    # Valid LLPF metadata over tensors that do not fit it.
    with safe_open(ws.a, "pt") as f:
        meta = f.metadata()
    save_file({k: v for k, v in state.items() if k != "head.bias"}, bad / "missing-tensor.safetensors", meta)
    save_file({**state, "layers.1.weight": torch.zeros(64, 65)}, bad / "wrong-shape.safetensors", meta)
    five = json.dumps({**json.loads(meta["llpf.model_kwargs"]), "num_classes": 5})
    save_mode(bad / "five-classes.safetensors", build_model("mlp", **json.loads(five)),
              ModeMeta.from_metadata({**meta, "llpf.model_kwargs": five}, bad))
    empty_root = ws.root / "empty-data-root"
    empty_root.mkdir()

    # A real, finished run folder, which `connect` without --resume must refuse to touch.
    from llpf_core import ContinuitySpec, load_preset, run_search
    existing = ws.root / "existing-run"
    cfg = dataclasses.replace(load_preset("mlp-digits-m2m"), ticks=2, device="cpu", save_every=1,
                              continuity=ContinuitySpec(points=0), baseline_points=0)
    assert run_search(ws.a, ws.b, cfg, existing).status == "finished"

    a, b = ws.a, ws.b
    commands = {
        "corrupt": ["inspect", bad / "corrupt.safetensors"],
        "truncated": ["connect", a, bad / "truncated.safetensors", "--out", out / "truncated"],
        "empty": ["independence", bad / "empty.safetensors", b],
        "pickle": ["inspect", bad / "pickle.safetensors"],
        "no_llpf_metadata": ["connect", bad / "plain.safetensors", b, "--out", out / "plain"],
        "different_architectures": ["connect", a, ws.cnn, "--out", out / "archs"],
        "different_class_counts": ["connect", a, bad / "five-classes.safetensors", "--out", out / "classes"],
        "classes_do_not_fit_the_dataset": ["connect", bad / "five-classes.safetensors", "origin", "--out", out / "c5"],
        "missing_tensor": ["connect", a, bad / "missing-tensor.safetensors", "--out", out / "missing"],
        "wrong_shape": ["connect", bad / "wrong-shape.safetensors", b, "--out", out / "shape"],
        "unknown_preset": ["connect", a, b, "--out", out / "preset", "--preset", "no-such-preset"],
        "unknown_set_key": ["connect", a, b, "--out", out / "key", "--set", "tickz=5"],
        "wrong_type_set_value": ["connect", a, b, "--out", out / "type", "--set", "ticks=abc"],
        "zero_step": ["connect", a, b, "--out", out / "zero", "--set", "phases.0.step_a=0"],
        "pattern_matches_nothing": ["connect", a, b, "--out", out / "nope", "--set", 'phases.0.layers=["nope*"]'],
        "zero_eval_every": ["connect", a, b, "--out", out / "eval", "--set", "eval_every=0"],
        "negative_save_every": ["connect", a, b, "--out", out / "save", "--set", "save_every=-5"],
        "zero_checkpoint_every": ["connect", a, b, "--out", out / "ckpt", "--set", "checkpoint_every=0"],
        "missing_dataset": ["train", "--model", "lenet5", "--dataset", "mnist", "--seed", 1,
                            "--out", ws.root / "lenet5.safetensors", "--data-root", empty_root],
        "missing_data_root": ["train", "--model", "lenet5", "--dataset", "mnist", "--seed", 1,
                              "--out", ws.root / "lenet5.safetensors", "--data-root", ws.root / "no-such-root"],
        "cuda_without_gpu": ["connect", a, b, "--out", out / "cuda", "--device", "cuda"],
        "existing_run_folder": ["connect", a, b, "--out", existing],
        "out_under_a_file": ["connect", a, b, "--out", b / "run"],  # a folder that cannot be created
    }
    assert tuple(commands) == CASES
    before = snapshot(ws.root)
    results = run_many(commands, ws.env)
    after = snapshot(ws.root)
    return dataclasses.make_dataclass("Errors", ["results", "before", "after", "bad", "out", "existing",
                                                 "empty_root"])(
        results, before, after, bad, out, existing, empty_root)


# --- one test per failing command --------------------------------------------------------------------

EXPECTED = {  # fragments of the one error line
    "corrupt": ["corrupt.safetensors", "not a valid safetensors"],
    "truncated": ["truncated.safetensors", "not a valid safetensors"],
    "empty": ["empty.safetensors", "not a valid safetensors"],
    "pickle": ["pickle.safetensors", "not a valid safetensors"],
    "no_llpf_metadata": ["plain.safetensors", "not an LLPF mode", "llpf.format"],
    "different_architectures": ["different architectures", "mlp", "cnn"],
    "different_class_counts": ["different architectures", "'num_classes': 10", "'num_classes': 5"],
    "classes_do_not_fit_the_dataset": ["num_classes is 5", "digits has 10"],
    "missing_tensor": ["missing-tensor.safetensors", "do not match model 'mlp'", "missing head.bias"],
    "wrong_shape": ["wrong-shape.safetensors", "layers.1.weight", "(64, 65)", "expects (64, 64)"],
    "unknown_preset": ["unknown preset", "no-such-preset", "mlp-digits-m2m"],
    "unknown_set_key": ["unknown config key", "tickz"],
    "wrong_type_set_value": ["ticks", "int", "abc"],
    "zero_step": ["phases.0", "zero"],
    "pattern_matches_nothing": ["nope*", "matches no layer"],
    "zero_eval_every": ["eval_every must be positive", "got 0"],
    "negative_save_every": ["save_every must be positive", "got -5"],
    "zero_checkpoint_every": ["checkpoint_every must be positive", "got 0"],
    "missing_dataset": ["mnist", "not found", "empty-data-root"],
    "missing_data_root": ["mnist", "not found", "no-such-root"],
    "cuda_without_gpu": ["cuda", "no CUDA GPU"],
    "existing_run_folder": ["existing-run", "already exists", "--resume"],
    "out_under_a_file": ["cannot create run folder", "mlp-seed2.safetensors/run", "is a file, not a folder"],
}


@pytest.mark.parametrize("case", CASES)
def test_user_error_is_one_line_with_exit_code_2(errors, case):
    assert_user_error(errors.results[case], *EXPECTED[case])


def test_failing_commands_create_and_change_nothing(errors):
    created = sorted(set(errors.after) - set(errors.before))
    removed = sorted(set(errors.before) - set(errors.after))
    changed = sorted(k for k in set(errors.before) & set(errors.after) if errors.before[k] != errors.after[k])
    assert (created, removed, changed) == ([], [], [])
    assert not errors.out.exists()  # no run folder of a refused `connect`
    assert list(errors.empty_root.iterdir()) == []


def test_pickle_is_never_unpickled(errors, ws):
    # The payload works: unpickling it runs it.
    control_marker = ws.root / "CONTROL_UNPICKLED"
    assert not control_marker.exists()
    pickle.loads((errors.bad / "control.pkl").read_bytes())
    assert control_marker.exists()
    control_marker.unlink()
    # The CLI refused the file without running it, and left it as it was.
    assert_user_error(errors.results["pickle"], "a pickle")
    assert not (errors.bad / "UNPICKLED").exists()
    assert errors.after["bad/pickle.safetensors"] == errors.before["bad/pickle.safetensors"]


def test_pickle_is_refused_by_the_python_api_too(tmp_path):
    from llpf_core import UserError, load_mode
    path, marker = tmp_path / "mode.safetensors", tmp_path / "UNPICKLED"
    write_pickle(path, marker, {"w": torch.zeros(3)})
    data = path.read_bytes()
    with pytest.raises(UserError) as info:
        load_mode(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    assert not marker.exists()
    assert path.read_bytes() == data


def test_refused_run_folder_is_left_as_it_was(errors):
    run_files = {k: v for k, v in errors.before.items() if k.startswith("existing-run")}
    assert "existing-run/run.json" in run_files and "existing-run/metrics.csv" in run_files
    assert {k: errors.after.get(k) for k in run_files} == run_files
    assert json.loads((errors.existing / "run.json").read_text())["status"] == "finished"


@pytest.mark.parametrize("cut", [0, 4, 8, 9, "header-1", "header", "end-1"])
def test_truncated_mode_file_is_a_one_line_user_error(ws, tmp_path, cut):
    """In-process, at every kind of cut: inside the length field, the JSON header, and the data."""
    from llpf_core import UserError, load_mode
    data = ws.a.read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")
    n = {"header-1": header_end - 1, "header": header_end, "end-1": len(data) - 1}.get(cut, cut)
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[:n])
    with pytest.raises(UserError) as info:
        load_mode(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


# --- --help ------------------------------------------------------------------------------------------

def test_top_level_help_as_a_subprocess(tmp_path):
    r = run_cli(["--help"], cli_env(tmp_path))
    assert r.returncode == 0, r.describe()
    assert r.stdout.startswith("usage:")
    for command in COMMANDS:
        assert command in r.stdout, f"{command} missing from --help\n{r.stdout}"


def test_every_subcommand_has_help(capsys):
    """In-process (the subprocess above covers ``python -m``): each subcommand's --help exits 0."""
    from llpf_core.cli import build_parser, main
    subparsers = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    commands = list(subparsers.choices)
    assert set(COMMANDS) <= set(commands)
    for command in commands:
        with pytest.raises(SystemExit) as info:
            main([command, "--help"])
        assert info.value.code == 0, command
        out = capsys.readouterr().out
        assert out.startswith(f"usage: python -m llpf_core {command}"), out
