"""How much a watching dashboard slows a search, and how long the demo takes in the browser.

    python bench/dashboard_overhead.py [--repeats 3] [--window 15] [--no-demo | --demo-only]

A real `streamlit run` server; Debian's chromium (Playwright) starts a LeNet-5 Fashion-MNIST search
(its preset: minutes long, like the runs people watch) from the Search page. While it runs, the browser
alternates between the run's live view (progress every second, charts every few seconds) and a blank
page, --window seconds each, starting and ending blank: U W U W U W U. The search's SGD steps/s in each
window come from its metrics.csv (its own clock), leaving out the first 2 s after each switch and the
ticks that evaluated or checked continuity (their number per window varies). Each
watched window is compared with the mean of the blank windows on either side, which cancels the slow
drift of a shared machine; the median of those ratios is the figure. The CPU that the server and the
browser used while watching is printed as a share of one core (from /proc).

The demo (unless --no-demo): click "Run the demo" on Home and wait for "finished"; the click-to-finished
time includes training the two digits MLPs in a fresh workspace. Each repeat runs the demo twice, once
watched and once with the browser on a blank page as soon as the search starts (the order alternates):
the ratio of its search's steps/s is what watching a young run, whose charts redraw every second, costs.
"""
import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from playwright.sync_api import sync_playwright  # noqa: E402
from search_overhead import CASES, make_modes  # noqa: E402

from llpf_core import load_run  # noqa: E402
from llpf_core.device import resolve_device  # noqa: E402
from llpf_core.workspace import workspace_dir  # noqa: E402

CASE = CASES["lenet5-fashion-mnist-m2m"]


def search_clock(run_dir: Path) -> float:
    """The search's own clock (wall_s) at its last tick written to metrics.csv."""
    return float(load_run(run_dir).metrics["wall_s"].iloc[-1])


def steps_per_s(run_dir: Path, since: float, until: float) -> float:
    """SGD steps/s of the ticks that ended in (since, until] on the search's clock. Ticks that also
    evaluated or checked continuity are left out: a window with one more of them than the next would
    otherwise look slower."""
    m = load_run(run_dir).metrics
    m = m.assign(seconds=m["wall_s"].diff())
    m = m[(m["wall_s"] > since) & (m["wall_s"] <= until) & m["train_loss"].isna() & m["continuity_max_loss"].isna()]
    return float(m["iterations"].sum() / m["seconds"].sum())


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes, from /proc (0 for processes that are gone)."""
    total, tick = 0, os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / tick


def descendants(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return children + [d for c in children for d in descendants(c)]


def modes_in(workspace: Path) -> list[Path]:
    (workspace / "modes").mkdir(parents=True)
    sources = make_modes(CASE, resolve_device("cpu"), workspace_dir() / "bench-modes")
    return [Path(shutil.copy(s, workspace / "modes" / f"{CASE.model}-{CASE.dataset}-{s.name}")) for s in sources]


@contextmanager
def server(workspace: Path):
    """A `streamlit run app/Home.py` server on a free port, as the README starts it; yields (url, pid)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app/Home.py", "--server.port", str(port)],
                               cwd=REPO, env={**os.environ, "LLPF_HOME": str(workspace)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(180):
            try:
                urllib.request.urlopen(f"{url}/_stcore/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        yield url, process.pid
    finally:
        process.terminate()
        process.wait(30)


def watched_and_blank(workspace: Path, window: float, pairs: int = 3) -> tuple[list[float], float, float]:
    """Ratios watched/blank of the search's steps/s, and the server's and the browser's CPU use (cores)
    while watching."""
    modes_in(workspace)
    with server(workspace) as (url, server_pid), sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium")
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{url}/search")
        page.get_by_role("button", name="Start search").click()
        page.wait_for_url("**/runs?run=*", timeout=60_000)
        live_url = page.url
        page.get_by_text("SGD steps/s", exact=False).wait_for(timeout=120_000)
        run_dir = next((workspace / "runs").iterdir())
        # /proc counts each process on its own: the server's figure leaves out its search child
        server_side = {server_pid, *descendants(server_pid)}
        browser_pids = [q for q in descendants(os.getpid()) if q not in server_side]  # Playwright, chromium
        rates, cpu = {"blank": [], "watched": []}, [0.0, 0.0, 0.0]
        for kind in ["blank", "watched"] * pairs + ["blank"]:
            if kind == "watched":
                page.goto(live_url)
            else:
                page.goto("about:blank")
            time.sleep(2)  # page load or teardown
            w0, c0 = search_clock(run_dir), (cpu_seconds([server_pid]), cpu_seconds(browser_pids), time.time())
            time.sleep(window)
            w1, c1 = search_clock(run_dir), (cpu_seconds([server_pid]), cpu_seconds(browser_pids), time.time())
            rates[kind].append(steps_per_s(run_dir, w0, w1))
            if kind == "watched":
                cpu = [a + b1 - b0 for a, b0, b1 in zip(cpu, c0, c1)]
        page.goto(live_url)
        page.get_by_test_id("stMainBlockContainer").get_by_role("button", name="Stop").click()  # not the header one
        page.get_by_text("status stopped", exact=False).wait_for(timeout=120_000)
        browser.close()
    blank, watched = rates["blank"], rates["watched"]
    ratios = [w / ((blank[i] + blank[i + 1]) / 2) for i, w in enumerate(watched)]
    return ratios, cpu[0] / cpu[2], cpu[1] / cpu[2]


def demo_in_browser(workspace: Path, watch: bool = True) -> tuple[float, float]:
    """The demo from a click on "Run the demo": seconds to "finished" and its search's SGD steps/s. With
    ``watch`` the browser stays on the live view (whose charts redraw every second while the run is
    young), without it the browser goes to a blank page once the search has started."""
    with server(workspace) as (url, _), sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium")
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        t0 = time.time()
        page.get_by_role("button", name="Run the demo").click()
        if watch:
            page.get_by_text("status finished", exact=False).wait_for(timeout=600_000)
        else:
            page.wait_for_url("**/runs?run=demo-*", timeout=60_000)
            page.goto("about:blank")
            run_json = next(iter((workspace / "runs").glob("demo-*/run.json")), None)
            while run_json is None or load_run(run_json.parent).status != "finished":
                assert time.time() - t0 < 600, "the demo did not finish"
                time.sleep(0.1)
                run_json = run_json or next(iter((workspace / "runs").glob("demo-*/run.json")), None)
        elapsed = time.time() - t0
        browser.close()
    run_dir = next((workspace / "runs").glob("demo-*"))
    return elapsed, steps_per_s(run_dir, 0.0, float("inf"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--window", type=float, default=15.0, help="seconds per watched or blank window")
    parser.add_argument("--no-demo", action="store_true", help="skip the demo's click-to-finished time")
    parser.add_argument("--demo-only", action="store_true", help="only the demo, watched and blank")
    args = parser.parse_args()
    ratios, demos, demo_ratios = [], [], []
    for i in range(args.repeats):
        if not args.demo_only:
            with tempfile.TemporaryDirectory() as tmp:
                pair_ratios, server_cores, browser_cores = watched_and_blank(Path(tmp), args.window)
            ratios += pair_ratios
            print(f"repeat {i + 1}: steps/s watched / blank = " + ", ".join(f"{r:.3f}" for r in pair_ratios)
                  + f"; while watching, the server used {server_cores:.2f} of a core and the browser "
                  f"{browser_cores:.2f}", flush=True)
        if not args.no_demo:
            rates = {}
            for watch in ((True, False) if i % 2 == 0 else (False, True)):  # alternate which goes first
                with tempfile.TemporaryDirectory() as tmp:
                    elapsed, rates[watch] = demo_in_browser(Path(tmp), watch)
                if watch:
                    demos.append(elapsed)
            demo_ratios.append(rates[True] / rates[False])
            print(f"          demo, click to finished in the browser: {demos[-1]:.1f} s; its search's steps/s "
                  f"watched / blank = {demo_ratios[-1]:.3f} ({rates[True]:.0f} / {rates[False]:.0f})", flush=True)
    if ratios:
        print(f"\n{CASE.preset} search, steps/s with the live view open over steps/s with a blank page: median "
              f"{statistics.median(ratios):.3f} over {len(ratios)} windows")
    if demos:
        print(f"demo click to finished in the browser: median {statistics.median(demos):.1f} s; the demo's "
              f"search watched / blank: median {statistics.median(demo_ratios):.3f} over {len(demo_ratios)}")


if __name__ == "__main__":
    main()
