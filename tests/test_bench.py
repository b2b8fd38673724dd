"""The GPU check and the benches it runs: a dry run on the CPU, so that the script cannot rot unseen."""
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llpf_core import load_preset
from llpf_core.data import DEBIAN_FASHION_MNIST
from llpf_core.train import load_recipe

REPO = Path(__file__).resolve().parent.parent


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_check, search_overhead, r18 = _bench("gpu_check"), _bench("search_overhead"), _bench("resnet18_fashion_gpu")


def test_gpu_check_dry_run_on_the_cpu(tmp_path):
    """Every part runs and reports its figures; the out dir stays flat and small (the device's limits)."""
    data = tmp_path / "carried"
    data.mkdir()
    for gz in DEBIAN_FASHION_MNIST.glob("*labels-idx1-ubyte.gz"):  # the two small files
        shutil.copy(gz, data)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--device", "cpu", "--dry-run", "--out-dir", out,
                           "--work-dir", tmp_path / "work", "--data-root", data], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    parts = summary["parts"]
    assert {name: part["status"] for name, part in parts.items()} == {
        "environment": "ok", "search_overhead": "ok", "llpf_run": "ok", "batched": "ok", "pytest": "ok"}, parts
    assert summary["environment"]["device"] == "cpu" and summary["environment"]["torch"]
    assert summary["unpacked"] == ["t10k-labels-idx1-ubyte", "train-labels-idx1-ubyte"]
    assert sorted(p.name for p in data.iterdir()) == ["t10k-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    (overhead,) = parts["search_overhead"]["figures"]
    assert overhead["case"] == "mlp-digits-m2m" and overhead["steps"] > 0 and 0 < overhead["ratio"]
    run = parts["llpf_run"]["figures"]
    assert run["status"] == "finished" and run["ticks"] == 4 and run["barrier"] > run["path_max_train_loss"] > 0
    batched = {r["case"]: r for r in parts["batched"]["figures"]}
    assert set(batched) == {"training only, digits MLP, K=2", "digits MLP, K=2"}
    assert all(r["serial_wall"] > 0 and r["batched_wall"] > 0 for r in batched.values())
    assert parts["pytest"]["figures"]["passed"] >= 2 and parts["pytest"]["figures"]["failed_tests"] == []
    files = sorted(p.name for p in out.iterdir())
    assert files == ["batched.json", "batched.log", "llpf_run.json", "llpf_run.log", "pytest.log",
                     "search_overhead.json", "search_overhead.log", "summary.json"]
    assert "search/bare" in proc.stdout and "barrier" in proc.stdout and "passed" in proc.stdout
    assert "batched digits MLP, K=2" in proc.stdout


def test_the_gpu_profile_names_cases_presets_and_tests_that_exist():
    profile = gpu_check.PROFILES["gpu"]
    overhead = profile["search_overhead"][1]
    cases = [overhead[i + 1] for i, a in enumerate(overhead) if a == "--case"]
    assert cases == ["resnet18-synthetic-m2m", "resnet18-synthetic-m2m-loss-read"]
    for case in cases:
        cuda = search_overhead.CASES[case].overrides["cuda"]
        assert "dtype=bfloat16" in cuda and "channels_last=true" in cuda
    assert "train.max_iters=100" in search_overhead.CASES[cases[1]].overrides["cuda"]
    run = profile["llpf_run"][1]
    load_recipe(run[run.index("--recipe") + 1])
    cfg = r18.search_config(run[run.index("--preset") + 1], int(run[run.index("--ticks") + 1]), "cpu",
                            run[run.index("--dtype") + 1], [run[i + 1] for i, a in enumerate(run) if a == "--set"])
    assert len(cfg.phases) == 6 and cfg.phases[-1].start_tick < cfg.ticks and cfg.channels_last
    for test_file in gpu_check.ENGINE_TESTS:
        text = (REPO / test_file).read_text()
        assert not re.search(r"^\s*(import|from) (streamlit|plotly|playwright|app)\b", text, re.M), test_file
    assert sum(budget for budget, _ in profile.values()) <= gpu_check.TOTAL_SECONDS <= 8 * 60


def test_a_failed_or_overlong_part_is_recorded(tmp_path):
    failed = gpu_check.run_part("x", [sys.executable, "-c", "print('half done'); raise SystemExit(3)"], 60,
                                tmp_path / "x.log")
    assert failed["status"] == "failed" and failed["rc"] == 3 and "half done" in failed["tail"]
    slow = gpu_check.run_part("y", [sys.executable, "-c", "import time; print('started', flush=True); "
                                    "time.sleep(120)"], 10, tmp_path / "y.log")  # 10 s: time to start
    assert slow["status"] == "timed out" and "started" in (tmp_path / "y.log").read_text()


def test_pytest_figures_from_its_last_line_or_from_a_log_cut_short(tmp_path):
    log = tmp_path / "pytest.log"
    verbose = ("tests/test_geometry.py::test_move[a] PASSED    [  5%]\n"
               "tests/test_search.py::test_resume FAILED                 [ 10%]\n")
    log.write_text(verbose + "FAILED tests/test_search.py::test_resume - AssertionError: x\n"
                   "=========== 1 passed, 1 failed, 12 deselected in 9.81s ===========\n")
    assert gpu_check.pytest_figures(log) == {"failed_tests": ["tests/test_search.py::test_resume"], "passed": 1,
                                             "failed": 1, "deselected": 12}
    log.write_text(verbose + "tests/test_search.py::test_slow \n[gpu_check] pytest: killed after its budget\n")
    assert gpu_check.pytest_figures(log) == {"failed_tests": ["tests/test_search.py::test_resume"], "passed": 1,
                                             "failed": 1, "cut_short": True}


@pytest.mark.parametrize("name, card", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"), ("NVIDIA H100 PCIe", "H100 PCIe"), ("NVIDIA H100 NVL", "H100 NVL"),
    ("NVIDIA H200", "H200 SXM"), ("NVIDIA H200 NVL", "H200 NVL"), ("NVIDIA A100-SXM4-80GB", "A100"),
    ("NVIDIA L40S", "L40S"), ("NVIDIA L4", "L4"), ("NVIDIA GeForce RTX 4090", None)])
def test_the_bf16_peak_is_the_exact_card_s(name, card):
    peak = search_overhead.bf16_peak(name)
    assert (peak[0] if peak else None) == card


def test_compressed_phases_keep_the_paper_s_structure_and_each_phase_s_share():
    cfg = load_preset("resnet18-cifar10-m2m-paper")
    short = r18.compress_phases(cfg, 350)
    assert short.ticks == 350 and [p.start_tick for p in short.phases] == [0, 100, 150, 200, 250, 300]
    assert [p.layers for p in short.phases] == [p.layers for p in cfg.phases]
    for p, q in zip(cfg.phases, short.phases):
        assert (1 - q.step_a) ** 100 == pytest.approx((1 - p.step_a) ** 10000, rel=1e-9)


def test_fashion_mnist_gz_files_unpack_into_torchvision_s_layout(tmp_path):
    source = tmp_path / "carried" / "FashionMNIST" / "raw"
    source.mkdir(parents=True)
    for gz in DEBIAN_FASHION_MNIST.glob("t10k-*.gz"):
        shutil.copy(gz, source)
    root = tmp_path / "data"
    assert r18.unpack_fashion_mnist(tmp_path / "carried", root) == ["t10k-images-idx3-ubyte",
                                                                    "t10k-labels-idx1-ubyte"]
    assert r18.unpack_fashion_mnist(tmp_path / "carried", root) == []  # once
    raw = root / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    assert (raw / "t10k-images-idx3-ubyte").stat().st_size == 16 + 10000 * 28 * 28


def test_tests_left_out_where_their_tool_is_absent_exist(monkeypatch, tmp_path):
    import llpf_core.data

    monkeypatch.setattr(llpf_core.data, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python3"))
    absent = gpu_check.tests_that_cannot_run_here()
    assert len(absent) == 2
    for test in absent:
        path, name = test.split("::")
        assert path in gpu_check.ENGINE_TESTS and f"def {name}(" in (REPO / path).read_text()
