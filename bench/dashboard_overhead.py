"""How much a watching dashboard slows a search: the demo's search with and without a browser on it.

    python bench/dashboard_overhead.py [--repeats 3]

(a) without: the dashboard's job registry runs the demo in this process, nobody watching;
(b) with: a real `streamlit run` server, Debian's chromium (Playwright) clicks "Run the demo" and stays
    on the live view, which redraws once a second, until the run finishes.
Both measure the search's SGD steps/s from its run folder (iterations / wall_s, training of the modes
excluded) and print the medians and the ratio b/a. (b) also gives the click-to-finished time.
"""
import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "app")]

from playwright.sync_api import sync_playwright  # noqa: E402
from runner import Registry  # noqa: E402

from llpf_core import load_run  # noqa: E402


def steps_per_s(run_dir: Path) -> float:
    m = load_run(run_dir).metrics
    return float(m["iterations"].sum() / m["wall_s"].iloc[-1])


def without_dashboard(workspace: Path) -> float:
    registry = Registry()
    job = registry.start_demo(workspace)
    job = registry.wait(job.name)
    assert job.status == "finished", job
    return steps_per_s(job.run_dir)


def with_dashboard(workspace: Path) -> tuple[float, float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app/Home.py", "--server.port", str(port),
                               "--server.headless", "true"], cwd=REPO, env={**os.environ, "LLPF_HOME": str(workspace)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(180):
            try:
                urllib.request.urlopen(f"{url}/_stcore/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium")
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            t0 = time.time()
            page.get_by_role("button", name="Run the demo").click()
            page.get_by_text("status finished", exact=False).wait_for(timeout=600_000)
            elapsed = time.time() - t0
            browser.close()
    finally:
        server.terminate()
        server.wait(30)
    run_dir = next((workspace / "runs").glob("demo-*"))
    return steps_per_s(run_dir), elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    plain, watched, clicks = [], [], []
    for i in range(args.repeats):
        with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
            plain.append(without_dashboard(Path(a)))
            rate, elapsed = with_dashboard(Path(b))
            watched.append(rate)
            clicks.append(elapsed)
        print(f"repeat {i + 1}: without {plain[-1]:.0f} steps/s, with the dashboard open {watched[-1]:.0f} "
              f"steps/s, click to finished {clicks[-1]:.1f} s", flush=True)
    a, b = statistics.median(plain), statistics.median(watched)
    print(f"\nmedian of {args.repeats}: search {a:.0f} SGD steps/s without the dashboard, {b:.0f} with it open "
          f"(ratio {b / a:.2f}); demo click to finished in the browser {statistics.median(clicks):.1f} s")


if __name__ == "__main__":
    main()
