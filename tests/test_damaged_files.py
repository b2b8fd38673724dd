"""Damaged files (issue 23 item 7): every file LLPF reads back from a run folder, a mode file, a checkpoint,
a landscape or a sweep folder, truncated, with flipped bits or with values of the wrong JSON type, gives
the reader either a clean result or one UserError line naming the file, never a traceback, and leaves
the folder's bytes as they were. Property-based (hypothesis) over real files written by real runs."""
import dataclasses
import json
import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from llpf_core import (
    UserError,
    apply_overrides,
    compute_landscape,
    load_landscape,
    load_mode,
    load_preset,
    load_run,
    read_sweep,
    run_search,
    run_summary,
)
from llpf_core.landscape import project_run, run_plane
from llpf_core.safefile import DIGEST_KEY, tensor_digest
from llpf_core.sweep import plan_sweep
from llpf_core.sweepfolder import SweepFolder
from tests.conftest import run_cli

SETTINGS = dict(deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --- the real files --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def folders(digits_modes, tmp_path_factory):
    """A stopped M2M run (checkpoint, points, every CSV, a landscape plane), a finished bezier run (path.csv)
    and a sweep folder's sweep.json, all written by the engine itself."""
    root = tmp_path_factory.mktemp("damaged")
    cfg = apply_overrides(load_preset("mlp-digits-m2m"), [
        "device=cpu", "ticks=12", "eval_every=2", "eval_samples=200", "continuity.points=3", "continuity.samples=50",
        "continuity.every=1", "save_every=2", "checkpoint_every=2"])
    stop = threading.Event()
    run_search(*digits_modes, cfg, root / "m2m", stop_event=stop,
               on_tick=lambda e: stop.set() if e.tick == 4 else None)
    compute_landscape(load_run(root / "m2m"), 4, grid=3, samples=100)
    bezier = apply_overrides(cfg, ["algorithm=bezier", "curve.steps=4", "curve.points=3"])
    run_search(*digits_modes, bezier, root / "bezier")
    folder = SweepFolder(root / "sweep", plan_sweep("mlp", "digits", 2, 1), None)
    (root / "sweep").mkdir()
    folder.write()
    return root


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@contextmanager
def copy_of(folder: Path):
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / folder.name
        shutil.copytree(folder, copy)
        yield copy


def one_line(e: UserError) -> str:
    message = str(e)
    assert message and "\n" not in message and "Traceback" not in message, message
    return message


def clean_or_one_line(read, folder: Path, damaged_file: Path):
    """``read()`` gives a result or one UserError line naming the damaged file; the folder is unchanged."""
    before = snapshot(folder)
    try:
        result = read()
    except UserError as e:
        message = one_line(e)
        assert damaged_file.name in message or str(damaged_file.parent) in message, message
        result = None
    assert snapshot(folder) == before
    return result


# --- damage --------------------------------------------------------------------------------------

def byte_damage(data, raw: bytes) -> bytes:
    """The bytes truncated at a random point, or with 1 to 3 random bits flipped (only the positions are
    drawn, so that a failing example prints short)."""
    if data.draw(st.booleans(), label="truncate"):
        return raw[:data.draw(st.integers(0, len(raw) - 1), label="keep bytes")]
    out = bytearray(raw)
    flips = st.sets(st.tuples(st.integers(0, len(out) - 1), st.integers(0, 7)), min_size=1, max_size=3)
    for at, bit in data.draw(flips, label="flips (byte, bit)"):  # distinct: no flip undoes another
        out[at] ^= 1 << bit
    return bytes(out)


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=True)
                           | st.text(max_size=8), lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)


@st.composite
def type_damage(draw, value, drop: bool = True):
    """``value`` (parsed JSON) with one value somewhere in it replaced by another type, or (``drop``) one
    key dropped."""
    if isinstance(value, (dict, list)) and value and draw(st.integers(0, 3)):
        keys = list(value) if isinstance(value, dict) else list(range(len(value)))
        key = draw(st.sampled_from(keys))
        copy = dict(value) if isinstance(value, dict) else list(value)
        if drop and isinstance(copy, dict) and draw(st.integers(0, 4)) == 0:
            del copy[key]
        else:
            copy[key] = draw(type_damage(value[key], drop))
        return copy
    return draw(JSON_VALUES.filter(lambda v: type(v) is not type(value)))


def damage(data, path: Path, how: str, drop: bool = True) -> None:
    if how == "bytes":
        path.write_bytes(byte_damage(data, path.read_bytes()))
    else:
        path.write_text(json.dumps(data.draw(type_damage(json.loads(path.read_text()), drop))))


# --- readers of a run folder -----------------------------------------------------------------------

def read_everything(run_dir: Path) -> None:
    """What `inspect` and the dashboard's Explore read: run.json, every table, the summary, the points."""
    run = load_run(run_dir)
    for table in ("metrics", "layers", "continuity", "baseline", "path_table"):
        getattr(run, table)
    run_summary(run)
    _ = run.config
    for tick, _ in run.points()[:3]:
        run.point(tick)


RUN_FILES = ["run.json", "metrics.csv", "layers.csv", "continuity.csv", "baseline.csv", "points/000004.safetensors"]


@settings(max_examples=60, **SETTINGS)
@given(data=st.data(), name=st.sampled_from(RUN_FILES), how=st.sampled_from(["bytes", "bytes", "types"]))
def test_a_damaged_run_folder_reads_cleanly_or_is_one_line(folders, data, name, how):
    if how == "types" and not name.endswith(".json"):
        how = "bytes"
    with copy_of(folders / "m2m") as run_dir:
        damage(data, run_dir / name, how)
        clean_or_one_line(lambda: read_everything(run_dir), run_dir, run_dir / name)


@settings(max_examples=20, **SETTINGS)
@given(data=st.data(), how=st.sampled_from(["bytes", "types"]))
def test_a_damaged_path_csv_or_run_json_of_a_method_run(folders, data, how):
    name = "run.json" if how == "types" else data.draw(st.sampled_from(["path.csv", "run.json"]))
    with copy_of(folders / "bezier") as run_dir:
        damage(data, run_dir / name, how)
        clean_or_one_line(lambda: read_everything(run_dir), run_dir, run_dir / name)


@settings(max_examples=25, **SETTINGS)
@given(data=st.data(), name=st.sampled_from(["plane.json", "grid.csv"]), how=st.sampled_from(["bytes", "types"]))
def test_a_damaged_landscape_reads_cleanly_or_is_one_line(folders, data, name, how):
    if how == "types" and name == "grid.csv":
        how = "bytes"
    with copy_of(folders / "m2m") as run_dir:
        damage(data, run_dir / "landscape" / "plane-000004" / name, how)
        clean_or_one_line(lambda: load_landscape(load_run(run_dir), 4), run_dir, run_dir / "landscape" / name)


@settings(max_examples=20, **SETTINGS)
@given(data=st.data())
def test_damaged_points_project_cleanly_or_are_one_line(folders, data):
    with copy_of(folders / "m2m") as run_dir:
        point = run_dir / "points" / data.draw(st.sampled_from(["000002.safetensors", "000004.safetensors"]))
        damage(data, point, "bytes")

        def project():
            run = load_run(run_dir)
            project_run(run_plane(run, 4), run)
        clean_or_one_line(project, run_dir, point)


# --- resuming a damaged run ------------------------------------------------------------------------

def resume_or_one_line(run_dir: Path, damaged_file: Path) -> bool:
    """Resume the run: True if it finished, False if refused with one line (and then nothing changed). The
    line names the damaged file, or what its damage changed (e.g. a mode file's recorded sha256)."""
    before = snapshot(run_dir)
    try:
        run = run_search(None, None, None, run_dir, resume=True)
    except UserError as e:
        message = one_line(e)
        assert damaged_file.name in message or "--resume: the " in message, message
        assert snapshot(run_dir) == before
        return False
    assert run.status == "finished"
    return True


@settings(max_examples=25, **SETTINGS)
@given(data=st.data())
def test_resuming_from_a_damaged_checkpoint_is_one_line_and_changes_nothing(folders, data):
    with copy_of(folders / "m2m") as run_dir:
        damage(data, run_dir / "checkpoint.safetensors", "bytes")
        # The checkpoint's checksum finds damage anywhere in it, not only in its header.
        assert not resume_or_one_line(run_dir, run_dir / "checkpoint.safetensors")


@settings(max_examples=12, **SETTINGS)
@given(data=st.data(), name=st.sampled_from(["run.json", "metrics.csv"]), how=st.sampled_from(["bytes", "types"]))
def test_resuming_a_run_with_a_damaged_run_json_or_table(folders, data, name, how):
    if name == "metrics.csv":
        how = "bytes"
    with copy_of(folders / "m2m") as run_dir:
        # No key dropped here: a config key missing from run.json takes its default (runs from before
        # the key existed resume so), which may be a run of 1000 ticks; reading such a run is tested above.
        damage(data, run_dir / name, how, drop=False)
        resume_or_one_line(run_dir, run_dir / name)


def rewrite_checkpoint(run_dir: Path, **replace: torch.Tensor) -> None:
    """Replace tensors in the checkpoint and re-sign it, as a checkpoint copied from another machine is."""
    path = run_dir / "checkpoint.safetensors"
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    tensors = {**load_file(path), **replace}
    save_file(tensors, str(path), {**metadata, DIGEST_KEY: tensor_digest(tensors, metadata)})


@pytest.mark.parametrize("key, state", [
    ("stream/rng", torch.zeros(16, dtype=torch.uint8)),  # a CUDA generator's state (seed and offset)
    ("torch_rng", torch.zeros(5000, dtype=torch.uint8)),  # a CPU state of the wrong size
    ("torch_rng", torch.zeros(5056, dtype=torch.float32)),
    ("stream/perm", torch.arange(10)),  # not a permutation of the data
])
def test_a_foreign_or_wrong_generator_state_is_one_line_and_changes_nothing(folders, key, state):
    with copy_of(folders / "m2m") as run_dir:
        rewrite_checkpoint(run_dir, **{key: state})
        before = snapshot(run_dir)
        with pytest.raises(UserError) as e:
            run_search(None, None, None, run_dir, resume=True)
        assert key in one_line(e.value) or "batch order" in str(e.value)
        assert snapshot(run_dir) == before


def test_a_checkpoint_with_a_cuda_state_on_the_cli_is_exit_2_one_line_and_changes_nothing(folders, digits_modes):
    with copy_of(folders / "m2m") as run_dir:
        rewrite_checkpoint(run_dir, **{"stream/rng": torch.zeros(16, dtype=torch.uint8)})
        before = snapshot(run_dir)
        proc = run_cli("connect", digits_modes[0].path, digits_modes[1].path, "--out", run_dir, "--resume")
        assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
        assert "checkpoint.safetensors" in proc.stderr and "Traceback" not in proc.stderr
        assert snapshot(run_dir) == before


def test_inspect_and_check_of_a_damaged_run_are_exit_2_one_line(folders):
    with copy_of(folders / "m2m") as run_dir:
        (run_dir / "metrics.csv").write_bytes((run_dir / "metrics.csv").read_bytes().replace(b",", b"\xff", 1))
        before = snapshot(run_dir)
        for command in ("inspect", "check"):
            proc = run_cli(command, run_dir)
            assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
            assert "metrics.csv is damaged" in proc.stderr
        assert snapshot(run_dir) == before


# --- mode files ------------------------------------------------------------------------------------

@settings(max_examples=40, **SETTINGS)
@given(data=st.data())
def test_a_damaged_mode_file_loads_cleanly_or_is_one_line(digits_modes, data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mode.safetensors"
        shutil.copy(digits_modes[0].path, path)
        damage(data, path, "bytes")
        clean_or_one_line(lambda: load_mode(path), Path(tmp), path)


# --- sweep folders ---------------------------------------------------------------------------------

@settings(max_examples=30, **SETTINGS)
@given(data=st.data(), how=st.sampled_from(["bytes", "types"]))
def test_a_damaged_sweep_json_reads_cleanly_or_is_one_line(folders, data, how):
    with copy_of(folders / "sweep") as sweep:
        damage(data, sweep / "sweep.json", how)
        clean_or_one_line(lambda: read_sweep(sweep), sweep, sweep / "sweep.json")


def test_sweep_resume_of_a_damaged_sweep_json_is_exit_2_one_line(folders):
    with copy_of(folders / "sweep") as sweep:
        info = json.loads((sweep / "sweep.json").read_text())
        info["pairs"][0]["start_seed"] = "1"
        (sweep / "sweep.json").write_text(json.dumps(info))
        before = snapshot(sweep)
        proc = run_cli("sweep", "--resume", "--out", sweep)
        assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
        assert "sweep.json is damaged (pairs[0].start_seed is str, expected int)" in proc.stderr
        assert snapshot(sweep) == before


def test_a_pair_run_outside_the_sweep_folder_is_refused(folders):
    with copy_of(folders / "sweep") as sweep:
        info = json.loads((sweep / "sweep.json").read_text())
        info["pairs"][1]["run"] = "../../elsewhere"
        (sweep / "sweep.json").write_text(json.dumps(info))
        with pytest.raises(UserError, match="outside the sweep"):
            read_sweep(sweep)


def test_a_complete_sweep_json_reads_back_as_written(folders):
    info = read_sweep(folders / "sweep")
    assert [p["name"] for p in info["pairs"]] == ["seed1-seed2", "seed3-seed4"]
    assert dataclasses.asdict(plan_sweep("mlp", "digits", 2, 1)) == info["spec"]
