"""The GPU check: everything a session with a GPU should measure, in one call of at most 8 minutes.

    python3 bench/gpu_check.py --device cuda --out-dir $OUT --data-root llpf-workspace/gpu-data

Parts, each in its own process with its own time budget (a part that fails or runs out of time is recorded
and the next one still runs; the whole check stops starting parts after ``--total-seconds``):
  1. environment: device name, torch, CUDA and cuDNN versions, GPU memory;
  2. search_overhead: ResNet-18 on synthetic data at batch 256 in bf16 with channels-last, the search
     against the bare loop (steps/s, ratio, % of the card's dense bf16 peak, peak memory), with 20-step
     ticks and with the per-step loss read (max_iters 100);
  3. llpf_run: two ResNet-18 Fashion-MNIST (padded to 32x32x3) modes, then the paper's six-phase M2M
     compressed into a few hundred ticks (barrier, path max, steps/s);
  4. batched: K digits MLP pairs on the device, their training stacked (bench/batched_speed.py), against the
     same pairs one after another, for K = 1 and 8 (training alone and whole runs of 30 ticks);
  5. pytest: the engine's tests (not the app's, which need Streamlit) once on the device, with
     LLPF_TEST_DEVICE set to it (tests/conftest.py), leaving out the slow ones.

Written to ``--out-dir`` (default ``$OUT``, else ./gpu-check-out), flat, eight files: summary.json (every
part's status, time and figures), and per part its log and, for the benches, their JSON. Modes, runs and
the unpacked data go to ``--work-dir`` (default ``$LLPF_HOME/gpu-check``), reused by a second try.

Fashion-MNIST travels as its four ``*-ubyte.gz`` files (30 MB) in ``--data-root`` (or its
``FashionMNIST/raw``); they are unpacked into the work folder, so the carried folder stays as it was.

``--dry-run`` runs the same parts with tiny settings (an MLP and a small CNN on digits, a few ticks, one
test file) so that a CPU test can check the script end to end.
"""
import argparse
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
sys.path.insert(0, str(REPO))  # run as a script from a checkout
sys.path.insert(0, str(BENCH))

# The engine's test files, the ones this issue touches first (a part cut short still reports them): none
# imports Streamlit, plotly or Playwright.
ENGINE_TESTS = ["tests/test_geometry.py", "tests/test_evaluate.py", "tests/test_search.py", "tests/test_config.py",
                "tests/test_data.py", "tests/test_runfolder.py", "tests/test_thresholds.py", "tests/test_zoo.py",
                "tests/test_cli.py", "tests/test_cli_errors.py", "tests/test_hardening.py",
                "tests/test_lazy_imports.py", "tests/test_gpu_readiness.py", "tests/test_fast_paths.py"]


def tests_that_cannot_run_here() -> dict[str, str]:
    """Engine tests that check a tool of this repo's own machines, with the reason, where that tool is absent."""
    from llpf_core.data import DEBIAN_FASHION_MNIST

    absent = {}
    if not DEBIAN_FASHION_MNIST.is_dir():
        absent["tests/test_data.py::test_fashion_mnist_from_the_debian_package"] = (
            f"no Debian package {DEBIAN_FASHION_MNIST} here")
    if not (Path(sys.executable).parent / "hadolint").exists():
        absent["tests/test_hardening.py::test_dockerfile_passes_hadolint"] = "no hadolint (requirements-test.txt) here"
    return absent


TOTAL_SECONDS = 470  # no part starts later than this; the parts' start-up and the summary fit in 8 minutes

# Per profile: each part's time budget (s) and arguments. The GPU budgets add up to 450 s; with the
# environment part and the parts' start-up, under TOTAL_SECONDS.
PROFILES = {
    "gpu": {
        "search_overhead": (130, ["--case", "resnet18-synthetic-m2m", "--case", "resnet18-synthetic-m2m-loss-read",
                                  "--case-seconds", "40"]),
        "llpf_run": (140, ["--model", "resnet18", "--dataset", "fashion-mnist-rgb32",
                           "--recipe", "resnet18-cifar10-paper", "--preset", "resnet18-cifar10-m2m-paper",
                           "--epochs", "2", "--ticks", "300", "--minutes", "1.0", "--dtype", "bfloat16",
                           "--set", "eval_every=25", "--set", "continuity.every=50"]),
        "batched": (70, ["--ticks", "30", "--ks", "1,8", "--modes", "8", "--epochs", "5", "--skip-lenet",
                         "--skip-sweep"]),
        "pytest": (110, ["-m", "not slow", *ENGINE_TESTS]),
    },
    "dry-run": {
        "search_overhead": (60, ["--case", "mlp-digits-m2m", "--set", "ticks=5", "--threads", "1"]),
        "llpf_run": (60, ["--model", "cnn", "--dataset", "digits", "--recipe", "cnn-digits",
                          "--preset", "cnn-digits-m2m", "--epochs", "1", "--ticks", "4", "--minutes", "0.5",
                          "--dtype", "float32", "--set", "continuity.samples=64"]),
        "batched": (60, ["--ticks", "3", "--ks", "2", "--modes", "3", "--epochs", "2", "--skip-lenet",
                         "--skip-sweep"]),
        "pytest": (60, ["tests/test_geometry.py", "-k", "variance_correction"]),
    },
}


def environment(device_name: str) -> dict:
    """Device, torch, CUDA and cuDNN versions (this process's torch is the one the parts use)."""
    import torch

    from llpf_core.device import resolve_device

    device = resolve_device(device_name)
    info = {"device": str(device), "python": sys.version.split()[0], "torch": torch.__version__,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(device_name=props.name, memory_gib=props.total_memory / 2**30,
                    multiprocessors=props.multi_processor_count, capability=f"{props.major}.{props.minor}")
    else:
        info["device_name"] = "cpu"
    return info


def run_part(name: str, command: list[str], budget: float, log: Path, env: dict | None = None) -> dict:
    """Run one part as a process of its own session with its output in ``log``; kill its whole process group
    when the budget is spent. Returns status ("ok", "failed" or "timed out"), exit code and seconds."""
    t0 = time.monotonic()
    with open(log, "w") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        proc = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=budget)
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rc, status = proc.wait(), "timed out"
            out.write(f"\n[gpu_check] {name}: killed after its budget of {budget:.0f} s\n")
    result = {"status": status, "rc": rc, "seconds": round(time.monotonic() - t0, 1), "budget_s": budget,
              "log": log.name}
    if status != "ok":
        result["tail"] = log.read_text(errors="replace").splitlines()[-5:]
    return result


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def pytest_figures(log: Path) -> dict:
    """Counts from pytest's last line ("3 passed, 1 failed in 9.8s"), or, when it was killed before that, from
    its verbose per-test lines; and the failed tests' ids."""
    lines = log.read_text(errors="replace").splitlines()
    failed = [line.split()[1] for line in lines if line.startswith(("FAILED ", "ERROR "))]
    figures: dict = {}
    summary = next((line for line in reversed(lines) if re.fullmatch(r"=* ?\d+ \w+.* in [\d.]+s.*", line)), "")
    for part in summary.strip("= ").split(" in ")[0].split(", "):
        count, _, what = part.partition(" ")
        if count.isdigit():
            figures[what] = int(count)
    if not summary:  # cut short: count the verbose lines ("tests/x.py::test_y PASSED   [ 4%]")
        results = [m.group(2) for line in lines if (m := re.match(r"(tests/\S+::\S+) (PASSED|FAILED|ERROR)", line))]
        figures = {k.lower(): results.count(k) for k in ("PASSED", "FAILED", "ERROR") if k in results}
        failed = failed or [line.split()[0] for line in lines if re.match(r"tests/\S+::\S+ (FAILED|ERROR)", line)]
        figures["cut_short"] = True
    figures["failed_tests"] = failed
    return figures


def headline(summary: dict) -> list[str]:
    """The lines worth reading first, from whatever parts produced figures."""
    env = summary.get("environment", {})
    lines = [f"{env.get('device_name')} ({env.get('device')}): torch {env.get('torch')}, CUDA {env.get('cuda')}, "
             f"cuDNN {env.get('cudnn')}, Python {env.get('python')}"]
    for r in summary["parts"].get("search_overhead", {}).get("figures") or []:
        line = (f"{r['case']}: {r['dtype']}{' channels-last' if r['channels_last'] else ''}, {r['steps']} steps, "
                f"bare {r['bare']:.1f} steps/s, search {r['search']:.1f} steps/s, search/bare {r['ratio']:.3f} "
                f"(without set-up {r['ratio_loop']:.3f})")
        if "bare_share_of_peak" in r:
            line += (f"; training step {100 * r['bare_share_of_peak']:.1f} % of the {r['peak_card']} bf16 peak "
                     f"({r['bare_tflops']:.1f} of {r['peak_bf16_tflops']:g} TFLOP/s; the search "
                     f"{100 * r['search_share_of_peak']:.1f} %)")
        if "peak_memory_gib" in r:
            line += f"; peak memory {r['peak_memory_gib']:.2f} GiB"
        lines.append(line)
    r = summary["parts"].get("llpf_run", {}).get("figures")
    if r:
        lines.append(f"LLPF run: {r['ticks']} of {r['ticks_planned']} ticks ({r['status']}), phases reached "
                     f"{', '.join(r['phases_reached'])}, barrier {r['barrier']:.4f}, path max train loss "
                     f"{r['path_max_train_loss']:.4f}, final distance_rel {r['final_distance_rel']:.4f}, "
                     f"{r['steps_per_s']:.1f} steps/s")
    for r in summary["parts"].get("batched", {}).get("figures") or []:
        lines.append(f"batched {r['case']}: one after another {r['serial_wall']:.2f} s, batched "
                     f"{r['batched_wall']:.2f} s, {r['serial_wall'] / r['batched_wall']:.2f}x")
    r = summary["parts"].get("pytest", {}).get("figures")
    if r:
        counts = ", ".join(f"{v} {k}" for k, v in r.items() if k not in ("failed_tests", "cut_short"))
        counts += " (cut short)" if r.get("cut_short") else ""
        lines.append(f"pytest on {env.get('device')}: {counts}" +
                     (f"; failed: {' '.join(r['failed_tests'])}" if r["failed_tests"] else ""))
    for name, part in summary["parts"].items():
        lines.append(f"part {name}: {part['status']} in {part.get('seconds', 0):.0f} s"
                     + (f" ({part['reason']})" if "reason" in part else ""))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (or cuda:N); cpu for a dry run")
    parser.add_argument("--out-dir", type=Path, default=Path(os.environ.get("OUT") or "gpu-check-out"))
    parser.add_argument("--data-root", type=Path, help="folder with the Fashion-MNIST *-ubyte.gz files")
    parser.add_argument("--work-dir", type=Path, help="modes, runs, unpacked data (default $LLPF_HOME/gpu-check)")
    parser.add_argument("--dry-run", action="store_true", help="tiny settings, for a test on the CPU")
    parser.add_argument("--total-seconds", type=float, default=TOTAL_SECONDS,
                        help="start no part after this; shortens the last part's budget to fit")
    args = parser.parse_args()
    t_start = time.monotonic()
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    from llpf_core.workspace import workspace_dir

    work = (args.work_dir or workspace_dir() / "gpu-check").resolve()
    work.mkdir(parents=True, exist_ok=True)
    profile = PROFILES["dry-run" if args.dry_run else "gpu"]
    summary: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "profile":
                     "dry-run" if args.dry_run else "gpu", "parts": {}}

    def save() -> None:
        tmp = out / "summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=1))
        os.replace(tmp, out / "summary.json")

    t0 = time.monotonic()
    try:
        summary["environment"] = environment(args.device)
        summary["parts"]["environment"] = {"status": "ok", "seconds": round(time.monotonic() - t0, 1)}
    except Exception as e:  # noqa: BLE001 - recorded, and the parts below still run
        summary["environment"] = {"device": args.device}
        summary["parts"]["environment"] = {"status": "failed", "reason": f"{type(e).__name__}: {e}"}
    data_root = work / "data"
    if args.data_root:
        from resnet18_fashion_gpu import unpack_fashion_mnist

        try:
            summary["unpacked"] = unpack_fashion_mnist(args.data_root, data_root)
        except OSError as e:
            summary["unpacked"] = f"could not unpack from {args.data_root}: {e}"
    save()

    python = sys.executable
    commands = {
        "search_overhead": [python, "bench/search_overhead.py", "--device", args.device,
                            "--cache", str(work / "bench-modes"), "--json", str(out / "search_overhead.json")],
        "llpf_run": [python, "bench/resnet18_fashion_gpu.py", "--device", args.device, "--data-root", str(data_root),
                     "--out", str(work / "llpf-run"), "--json", str(out / "llpf_run.json")],
        "batched": [python, "bench/batched_speed.py", "--device", args.device, "--out", str(work / "batched"),
                    "--json", str(out / "batched.json")],
        "pytest": [python, "-m", "pytest", "-v", "-rfE", "-p", "no:cacheprovider"],
    }
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "LLPF_TEST_DEVICE": args.device,
           "LLPF_HOME": str(work)}  # data root: work/data
    for name, (budget, extra) in profile.items():
        command = commands[name] + extra
        left = args.total_seconds - (time.monotonic() - t_start)
        if left < 20:
            summary["parts"][name] = {"status": "skipped", "reason": f"{left:.0f} s left of --total-seconds"}
            save()
            continue
        if name == "pytest":
            if importlib.util.find_spec("pytest") is None:
                summary["parts"][name] = {"status": "skipped", "reason": "pytest is not installed here"}
                save()
                continue
            absent = {test: why for test, why in tests_that_cannot_run_here().items()
                      if test.split("::")[0] in command}
            for test in absent:
                command += ["--deselect", test]
            summary["deselected"] = absent
        print(f"[gpu_check] {name} (budget {min(budget, left):.0f} s)", flush=True)
        result = run_part(name, command, min(budget, left), out / f"{name}.log", env)
        if name == "pytest":
            result["figures"] = pytest_figures(out / f"{name}.log")
        else:
            result["figures"] = read_json(out / f"{name}.json")
        summary["parts"][name] = result
        save()
    summary["seconds"] = round(time.monotonic() - t_start, 1)
    save()
    print("\n".join(headline(summary)))


if __name__ == "__main__":
    main()
