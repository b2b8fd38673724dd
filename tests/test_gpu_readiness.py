"""Issue 15, engine side: what the first GPU run depends on, shown on the CPU with mocks, doctored
checkpoints and injected errors (cuda:N, resuming on the other device type, out of memory, Stop and
Pause inside long ticks, M2O's one optimizer group, channels_last end states, the opt-in CUDA settings)."""
import dataclasses
import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import llpf_core.driver
import llpf_core.llpf.kinds
import llpf_core.train
from llpf_core import (
    SearchConfig,
    UserError,
    apply_overrides,
    build_model,
    load_preset,
    load_run,
    run_search,
    save_mode,
)
from llpf_core.device import apply_cuda_settings, out_of_memory, resolve_device
from llpf_core.modefile import ModeMeta
from llpf_core.runfolder import RunWriter, read_run_json
from llpf_core.safefile import DIGEST_KEY, tensor_digest
from tests.conftest import REPO, run_cli


def short(preset: str = "mlp-digits-m2m", *overrides: str):
    return apply_overrides(load_preset(preset), ["device=cpu", "continuity.points=0", *overrides])


def stopped_run(modes, out, at_tick: int = 3):
    """A digits M2M run stopped (with its checkpoint) at ``at_tick``."""
    stop = threading.Event()
    run_search(*modes, short("mlp-digits-m2m", "ticks=20"), out,
               on_tick=lambda e: stop.set() if e.tick == at_tick else None, stop_event=stop)
    assert load_run(out).status == "stopped"


def folder_snapshot(path):
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# --- 1. cuda:N ------------------------------------------------------------------------------------

def test_a_gpu_index_beyond_the_gpus_present_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UserError, match=r"'cuda:1' requested but this machine has 1 CUDA GPU \(cuda:0 to cuda:0\)"):
        resolve_device("cuda:1")
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    assert resolve_device("cuda") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(UserError, match="has 2 CUDA GPUs"):
        resolve_device("cuda:7")


# --- 2. resuming on the other device type -----------------------------------------------------------

def doctor_checkpoint(out, device_type: str | None):
    """Make the checkpoint look written on a GPU: a CUDA generator's 16-byte state (seed and offset),
    and ``device_type`` set (or removed, as in a checkpoint from before it was recorded)."""
    path = out / "checkpoint.safetensors"
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    tensors = load_file(path)
    tensors["stream/rng"] = torch.zeros(16, dtype=torch.uint8)
    info = json.loads(metadata["llpf.checkpoint"])
    assert info["device_type"] == "cpu"  # what the search recorded
    if device_type is None:
        del info["device_type"]
    else:
        info["device_type"] = device_type
    metadata = {**metadata, "llpf.checkpoint": json.dumps(info)}
    save_file(tensors, str(path), {**metadata, DIGEST_KEY: tensor_digest(tensors, metadata)})


def test_resuming_a_gpu_checkpoint_on_the_cpu_is_refused_before_anything_is_written(digits_modes, tmp_path):
    out = tmp_path / "run"
    stopped_run(digits_modes, out)
    doctor_checkpoint(out, "cuda")
    before = folder_snapshot(out)
    with pytest.raises(UserError) as e:
        run_search(None, None, None, out, resume=True)
    message = str(e.value)
    assert "\n" not in message and "written on cuda" in message and "continue on cpu" in message
    assert "--device cuda" in message
    assert folder_snapshot(out) == before
    # The CLI: one line, exit 2, and --device on --resume is used rather than ignored.
    proc = run_cli("connect", digits_modes[0].path, digits_modes[1].path, "--out", out, "--resume",
                   "--device", "cpu")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "written on cuda" in proc.stderr and "(device 'cpu')" in proc.stderr
    assert folder_snapshot(out) == before


def test_an_older_checkpoint_takes_its_device_type_from_run_json(digits_modes, tmp_path):
    out = tmp_path / "run"
    stopped_run(digits_modes, out)
    doctor_checkpoint(out, None)
    info = read_run_json(out)
    writer = RunWriter(out)
    writer.info = info
    writer.update(device_used="cuda:0")  # as a run started on a GPU records it
    with pytest.raises(UserError, match="written on cuda and cannot continue on cpu"):
        run_search(None, None, None, out, resume=True)


def test_resume_uses_the_device_given(digits_modes, tmp_path):
    out = tmp_path / "run"
    stopped_run(digits_modes, out)
    proc = run_cli("connect", digits_modes[0].path, digits_modes[1].path, "--out", out, "--resume",
                   "--device", "cuda")
    # Refused either way: here no GPU exists; on a GPU machine the checkpoint was written on the CPU.
    refusal = "written on cpu" if torch.cuda.is_available() else "no CUDA GPU is available"
    assert proc.returncode == 2 and refusal in proc.stderr, proc.stderr
    assert load_run(out).status == "stopped"
    proc = run_cli("connect", digits_modes[0].path, digits_modes[1].path, "--out", out, "--resume", "--quiet",
                   "--device", "cpu", "--set", "ticks=5")
    assert proc.returncode == 0, proc.stderr
    assert "--device is used" in proc.stderr
    run = load_run(out)
    assert run.status == "finished" and run.info["device_used"] == "cpu"
    assert list(run.metrics["tick"]) == list(range(21))


# --- 3. out of memory ---------------------------------------------------------------------------------

@pytest.mark.parametrize("message", [
    "CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported",
    "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
    "cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
    "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory",
])
def test_out_of_memory_outside_the_caching_allocator_is_recognised(message):
    oom = out_of_memory(RuntimeError(message), "lower the batch size")
    assert isinstance(oom, UserError) and str(oom) == "out of memory: lower the batch size"


def test_other_runtime_errors_are_not_out_of_memory():
    assert out_of_memory(RuntimeError("CUDA error: an illegal memory access was encountered"), "x") is None
    assert out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), "x")


def test_out_of_memory_during_set_up_is_one_line_and_writes_nothing(digits_modes, tmp_path, monkeypatch):
    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79 GiB total)")

    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(llpf_core.driver, "Evaluator", no_memory)
        with pytest.raises(UserError) as e:
            run_search(*digits_modes, short("mlp-digits-m2m", "ticks=3"), out)
    message = str(e.value)
    assert message.startswith("out of memory: setting up the search on cpu: start a new run")
    assert "--set train.batch_size=" in message and "\n" not in message
    assert not (out / "run.json").exists()
    run = run_search(*digits_modes, short("mlp-digits-m2m", "ticks=3"), out)  # the same folder, again
    assert run.status == "finished"


def test_out_of_memory_during_a_resumed_set_up_leaves_the_run_as_it_was(digits_modes, tmp_path, monkeypatch):
    out = tmp_path / "run"
    stopped_run(digits_modes, out)
    before = folder_snapshot(out)
    def no_memory(*args, **kwargs):
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(llpf_core.driver, "load_dataset", no_memory)
    with pytest.raises(UserError, match="^out of memory: setting up the search"):
        run_search(None, None, None, out, resume=True)
    assert folder_snapshot(out) == before


def test_dashboard_training_reports_out_of_memory_in_one_line(tmp_path, monkeypatch):
    """Training runs in a child process of the server: the failure comes from there, through a plugin model
    (LLPF_PLUGINS, read by the child) whose builder fails as cuBLAS does when the GPU is full."""
    sys.path.insert(0, str(REPO / "app"))
    from jobs import Registry

    plugin = tmp_path / "full_gpu.py"
    plugin.write_text("from llpf_core import register_model\n\n\n@register_model\ndef fullgpu(**kwargs):\n"
                      "    raise RuntimeError('CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling "
                      "`cublasCreate(handle)`')\n")
    monkeypatch.setenv("LLPF_PLUGINS", str(plugin))
    registry = Registry()
    registry.start_training("oom", "fullgpu", "digits", [1], "mlp-digits", tmp_path / "modes", device="cpu")
    job = registry.wait("oom", 120)
    assert job.status == "failed"
    assert job.error.startswith("out of memory: training fullgpu on cpu: lower the batch size"), job.error
    assert "\n" not in job.error and not (tmp_path / "modes" / "fullgpu-digits-seed1.safetensors").exists()


# --- 4. Stop and Pause inside long ticks -----------------------------------------------------------------

LONG_TICK = 500  # SGD steps a tick


def long_ticks(ticks: int = 4):
    return short("mlp-digits-m2m", f"ticks={ticks}", "train.loss_threshold=0", f"train.min_iters={LONG_TICK}",
                 f"train.max_iters={LONG_TICK}", "checkpoint_every=1000", "save_every=1000")


def request_at_step(monkeypatch, step: int, event: threading.Event) -> None:
    """Set ``event`` when the search draws its ``step``-th batch: mid-tick, whatever the machine's speed."""
    drawn = [0]
    original = llpf_core.train.BatchStream.next

    def counted(self):
        drawn[0] += 1
        if drawn[0] == step:
            event.set()
        return original(self)

    monkeypatch.setattr(llpf_core.train.BatchStream, "next", counted)


def test_stop_lands_inside_a_long_tick_and_the_run_resumes_with_every_tick_once(digits_modes, tmp_path, monkeypatch):
    stop = threading.Event()
    request_at_step(monkeypatch, 2 * LONG_TICK + 100, stop)  # 100 steps into tick 3
    out = tmp_path / "run"
    run = run_search(*digits_modes, long_ticks(), out, stop_event=stop)
    assert run.status == "stopped"
    m = run.metrics
    assert list(m["tick"]) == [0, 1, 2, 3]
    assert list(m["iterations"])[1:] == [LONG_TICK, LONG_TICK, llpf_core.train.INTERRUPT_EVERY * 2]
    assert json.loads((out / "checkpoint.json").read_text())["tick"] == 3
    assert not np.isnan(m["train_loss"].iloc[-1])  # the stopped tick is evaluated and its point saved
    assert 3 in [t for t, _ in run.points()]
    monkeypatch.undo()
    run = run_search(None, None, None, out, resume=True)
    assert run.status == "finished" and list(run.metrics["tick"]) == list(range(5))
    assert run.metrics["iterations"].iloc[-1] == LONG_TICK


def test_pause_lands_inside_a_long_tick_with_a_consistent_checkpoint(digits_modes, tmp_path, monkeypatch):
    pause, stop = threading.Event(), threading.Event()
    request_at_step(monkeypatch, LONG_TICK + 300, pause)  # 300 steps into tick 2
    out = tmp_path / "run"
    seen: dict = {}

    def watch():
        deadline = time.time() + 120
        while time.time() < deadline:
            if (out / "run.json").exists() and read_run_json(out)["status"] == "paused":
                seen["checkpoint"] = json.loads((out / "checkpoint.json").read_text())["tick"]
                seen["rows"] = load_run(out).metrics[["tick", "iterations"]].values.tolist()
                pause.clear()
                return
            time.sleep(0.02)
        stop.set()  # never paused: end the run so that the test fails instead of hanging

    watcher = threading.Thread(target=watch)
    watcher.start()
    run = run_search(*digits_modes, long_ticks(), out, stop_event=stop, pause_event=pause)
    watcher.join()
    assert seen["checkpoint"] == 2 and seen["rows"][-1] == [2, 5 * llpf_core.train.INTERRUPT_EVERY]
    assert run.status == "finished" and list(run.metrics["tick"]) == list(range(5))


# --- 5. M2O: one optimizer group -------------------------------------------------------------------------

class PerGroupSGD(torch.optim.SGD):
    """M2O's optimizer before issue 15: one SGD group per parameter, each angle-conformal rate set as its
    group's lr (docs/algorithm.md, M2O, as the paper's code does)."""

    def __init__(self, params, lr):
        super().__init__([{"params": [p]} for p in params], lr=lr)
        self.lr0 = lr

    @property
    def scales(self):
        return [g["lr"] / self.lr0 for g in self.param_groups]

    @scales.setter
    def scales(self, values):
        for group, scale in zip(self.param_groups, values):
            group["lr"] = self.lr0 * scale


@pytest.mark.parametrize("end", ["origin", "mode"])
def test_m2o_with_one_optimizer_group_matches_one_group_per_parameter(digits_modes, tmp_path, monkeypatch, end):
    # A strict threshold: ticks train past min_iters, with the angle-conformal rates at work.
    cfg = short("mlp-digits-m2o", "ticks=20", "algorithm=m2o", "phases.0.step_a=0.02", "train.loss_threshold=0.005")
    end = "origin" if end == "origin" else digits_modes[1]
    run = run_search(digits_modes[0], end, cfg, tmp_path / "one")
    monkeypatch.setattr(llpf_core.llpf.kinds, "PlainSGD", PerGroupSGD)
    reference = run_search(digits_modes[0], end, cfg, tmp_path / "per-group")
    a, b = run.metrics, reference.metrics
    assert list(a["iterations"]) == list(b["iterations"]) and (a["iterations"] > 5).any()
    # The same updates up to rounding (lr * scale * grad against lr_i * grad), which training amplifies a little
    # every tick: a few 1e-5 after 30 ticks on one machine, 1e-7 on another.
    for column in ("distance", "train_loss", "train_loss_rolling", "test_loss"):
        assert np.allclose(a[column], b[column], rtol=1e-4, atol=0, equal_nan=True), column
    assert np.allclose(run.layers["norm"], reference.layers["norm"], rtol=1e-4)


# --- 6. channels_last --------------------------------------------------------------------------------------

def cnn_modes(tmp_path):
    modes = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        model = build_model("cnn", num_classes=10, in_channels=1, image_size=8)
        path = tmp_path / f"cnn-{seed}.safetensors"
        save_mode(path, model, ModeMeta(model="cnn", model_kwargs={"num_classes": 10, "in_channels": 1,
                                                                   "image_size": 8}, dataset="digits", seed=seed))
        modes.append(path)
    return modes


def test_channels_last_gives_the_nchw_run(tmp_path):
    a, b = cnn_modes(tmp_path)
    cfg = apply_overrides(load_preset("cnn-digits-m2m"), ["device=cpu", "ticks=8", "continuity.every=2",
                                                          "eval_every=2"])
    nchw = run_search(a, b, cfg, tmp_path / "nchw")
    nhwc = run_search(a, b, dataclasses.replace(cfg, channels_last=True), tmp_path / "nhwc")
    assert nhwc.config.channels_last and not nchw.config.channels_last
    x, y = nchw.metrics, nhwc.metrics
    assert list(x["iterations"]) == list(y["iterations"])
    # The same arithmetic in another memory layout: convolutions sum in another order, which training amplifies
    # every tick (4e-4 in the train loss after 8 ticks on one machine's CPU, under 1e-5 on another's).
    for column in ("distance", "train_loss", "test_loss", "continuity_max_loss"):
        assert np.allclose(x[column], y[column], rtol=1e-3, equal_nan=True), column


# --- 7. the CLI demo on the CPU ------------------------------------------------------------------------------

class Trained(Exception):
    pass


@pytest.mark.parametrize("given, used", [([], "cpu"), (["--device", "cuda"], "cuda")])
def test_the_cli_demo_runs_on_the_cpu_unless_told(monkeypatch, tmp_path, given, used):
    from llpf_core import commands
    from llpf_core.cli import build_parser
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine
    devices = []

    def train_mode(model, dataset, seed, path, recipe, device, *args, **kwargs):
        devices.append(device)
        raise Trained

    monkeypatch.setattr(commands, "train_mode", train_mode)
    with pytest.raises(Trained):
        commands.cmd_demo(build_parser().parse_args(["demo", "--out", str(tmp_path), *given]))
    assert devices == [used]


# --- 8. TF32 and cuDNN autotuning ------------------------------------------------------------------------------

def test_tf32_and_cudnn_benchmark_are_recorded_opt_in_settings(digits_modes, tmp_path, capfd):
    assert SearchConfig().tf32 is False and SearchConfig().cudnn_benchmark is False
    with pytest.raises(UserError, match="tf32 must be of type bool"):
        apply_overrides(SearchConfig(), ["tf32=1"])
    with pytest.raises(UserError, match="cudnn_benchmark must be of type bool"):
        apply_overrides(SearchConfig(), ["cudnn_benchmark=yes"])
    cfg = short("mlp-digits-m2m", "ticks=2", "tf32=true", "cudnn_benchmark=true")
    run = run_search(*digits_modes, cfg, tmp_path / "run")
    assert run.info["config"]["tf32"] is True and run.info["config"]["cudnn_benchmark"] is True
    assert "apply on CUDA only" in capfd.readouterr().err
    assert torch.get_float32_matmul_precision() == "highest" and not torch.backends.cudnn.benchmark  # CPU
    plain = run_search(*digits_modes, short("mlp-digits-m2m", "ticks=2"), tmp_path / "plain")
    assert plain.info["config"]["tf32"] is False and plain.info["config"]["cudnn_benchmark"] is False


def test_cuda_settings_are_applied_on_cuda_only():
    try:
        apply_cuda_settings(torch.device("cpu"), True, True)
        assert torch.get_float32_matmul_precision() == "highest" and not torch.backends.cudnn.benchmark
        apply_cuda_settings(torch.device("cuda:0"), True, True)
        assert torch.get_float32_matmul_precision() == "high" and torch.backends.cudnn.benchmark
        apply_cuda_settings(torch.device("cuda:0"), False, False)  # every CUDA search sets its own values
        assert torch.get_float32_matmul_precision() == "highest" and not torch.backends.cudnn.benchmark
    finally:
        torch.set_float32_matmul_precision("highest")
        torch.backends.cudnn.benchmark = False


# --- 9. the engine without the dashboard's packages ------------------------------------------------------------

def test_the_engine_imports_neither_streamlit_nor_ray():
    code = ("import llpf_core, sys\n"
            "from llpf_core import connect, driver, search, train, data, evaluate, modefile, runfolder, checks\n"
            "from llpf_core import commands, cli\n"
            "llpf_core.run_search, llpf_core.load_preset\n"
            "print(' '.join(sys.modules))")
    loaded = set(subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.split())
    assert "torch" in loaded  # the engine really was imported
    for package in ("streamlit", "ray"):
        assert not any(m == package or m.startswith(package + ".") for m in loaded), package
