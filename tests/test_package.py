"""The installable package: the wheel's contents, and the installed ``llpf`` command and dashboard run from
another folder. Nothing is downloaded: the wheel is built with the setuptools already installed, and
installed with ``--no-deps --target`` next to the test environment's own dependencies.
"""
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
import zipfile
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"


def pip(*args: str, cwd: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", *args, "--no-deps", "--no-build-isolation", "--no-index",
                           "--quiet", "--disable-pip-version-check"],
                          cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    pip("wheel", "-w", str(out), str(REPO), cwd=out)
    (found,) = out.glob("llpf_explorer-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The package installed as ``pip install .`` lays it out, in its own folder (a ``--target``)."""
    target = tmp_path_factory.mktemp("site")
    pip("install", "--target", str(target), str(REPO), cwd=target)
    return target


def installed_env(target: Path, workspace: Path) -> dict:
    # Only the installed copy is importable: no checkout on the path, run from a folder that is not one.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LLPF_HOME", "LLPF_PLUGINS")}
    return {**env, "PYTHONPATH": str(target), "LLPF_HOME": str(workspace), "OMP_NUM_THREADS": "1"}


def requirement_lines(name: str) -> list[str]:
    lines = (REPO / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def test_wheel_holds_the_engine_the_dashboard_and_the_assets(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in (REPO / "llpf_core").rglob("*.py"):
        assert path.relative_to(REPO).as_posix() in names, f"{path} is not in the wheel (list it in pyproject.toml)"
    for path in [*(REPO / "app").rglob("*.py"), REPO / "app" / ".streamlit" / "config.toml"]:
        assert f"llpf_core/app/{path.relative_to(REPO / 'app').as_posix()}" in names, path
    for pattern in ("presets/*.json", "recipes/*.json", "data/digits.safetensors", "images/*"):
        found = list((REPO / "assets").glob(pattern))
        assert found, pattern
        for path in found:
            assert f"llpf_core/assets/{path.relative_to(REPO / 'assets').as_posix()}" in names, path
    dist = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "llpf = llpf_core.cli:main" in zipfile.ZipFile(wheel).read(dist).decode()


def test_metadata_pins_torch_and_reads_the_requirement_files(wheel):
    meta_name = next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".dist-info/METADATA"))
    meta = zipfile.ZipFile(wheel).read(meta_name).decode().splitlines()
    requires = [line.removeprefix("Requires-Dist: ") for line in meta if line.startswith("Requires-Dist: ")]
    assert "torch==2.14.1" in requires and "torchvision==0.29.1" in requires
    assert [r for r in requires if ";" not in r] == requirement_lines("requirements.txt")
    for extra, file in (("ray", "requirements-ray.txt"), ("test", "requirements-test.txt")):
        assert [r.split(";")[0].strip() for r in requires if f'extra == "{extra}"' in r] == requirement_lines(file)
    version = next(line.split(": ", 1)[1] for line in meta if line.startswith("Version: "))
    assert f'__version__ = "{version}"' in (REPO / "llpf_core" / "version.py").read_text()
    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"] == {"llpf": "llpf_core.cli:main"}


def test_installed_llpf_runs_from_another_folder(installed, tmp_path):
    llpf = installed / "bin" / "llpf"
    env = installed_env(installed, tmp_path / "workspace")
    help_text = subprocess.run([llpf, "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert help_text.returncode == 0 and help_text.stdout.startswith("usage: llpf ")
    for command in ("train", "connect", "check", "inspect", "independence", "demo", "sweep", "landscape",
                    "presets", "import", "dashboard"):
        assert command in help_text.stdout
    where = subprocess.run([sys.executable, "-c", "import llpf_core.resources as r; print(r.ASSETS_DIR, r.APP_DIR)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert where.stdout.split() == [str(installed / "llpf_core" / "assets"), str(installed / "llpf_core" / "app")]
    presets = subprocess.run([llpf, "presets"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert presets.returncode == 0 and "mlp-digits-m2m" in presets.stdout and "mlp-digits" in presets.stdout
    mode = tmp_path / "m.safetensors"  # the digits data ship inside the package
    train = subprocess.run([llpf, "train", "--model", "mlp", "--seed", "1", "--epochs", "1", "--out", mode, "--quiet"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert train.returncode == 0 and mode.is_file(), train.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(command: list, cwd: Path, env: dict, log: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.time() + 120
    while True:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read() == b"ok":
                return proc
        except OSError:
            pass
        assert proc.poll() is None and time.time() < deadline, log.read_text()
        time.sleep(0.5)


def home_page_text(port: int) -> str:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{port}/")
        page.get_by_role("button", name="Run the demo").wait_for(timeout=90_000)
        text = page.inner_text("body")
        browser.close()
    return text


def stop(proc: subprocess.Popen) -> None:
    """End the server and what it started: `llpf dashboard` runs Streamlit as its child, which a plain
    terminate() of `llpf` left serving for the rest of the test session (serve() gives it its own session)."""
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(30)


def test_llpf_dashboard_serves_home_from_the_installed_package(installed, tmp_path):
    port = free_port()
    workspace = tmp_path / "my workspace"
    env = installed_env(installed, tmp_path / "not-this-one")
    proc = serve([installed / "bin" / "llpf", "dashboard", "--port", str(port), "--workspace", str(workspace)],
                 tmp_path, env, tmp_path / "dashboard.log", port)
    try:
        text = home_page_text(port)
    finally:
        stop(proc)
    assert "ModuleNotFoundError" not in text and "Error" not in text.split("Run the demo")[0]
    # A visit creates no folder (docs/threat-model.md): neither the --workspace nor $LLPF_HOME is made by it.
    assert not workspace.exists() and not (tmp_path / "not-this-one").exists()
    log = (tmp_path / "dashboard.log").read_text()
    assert f"127.0.0.1:{port}" in log and "0.0.0.0" not in log  # app/.streamlit/config.toml: this machine only


def test_streamlit_run_app_home_from_another_folder(tmp_path):
    """The form in Home.py's docstring, run from outside the checkout with no PYTHONPATH (issue 26, item 1)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(LLPF_HOME=str(tmp_path / "workspace"), OMP_NUM_THREADS="1")
    streamlit = Path(sys.executable).parent / "streamlit"
    proc = serve([streamlit, "run", REPO / "app" / "Home.py", "--server.port", str(port)], tmp_path, env,
                 tmp_path / "streamlit.log", port)
    try:
        text = home_page_text(port)
    finally:
        stop(proc)
    assert "ModuleNotFoundError" not in text and "llpf_core" not in (tmp_path / "streamlit.log").read_text()
