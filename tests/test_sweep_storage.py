"""The storage rule (issue 17): a sweep on a cluster refuses, in one line, when a node cannot see its folder.

The second node is a real Ray node (`ray start --address ... --block`) started inside its own mount
namespace (`unshare -m`: the tests run as root, as CI does) with an empty tmpfs over the sweep's parent
folder: its workers truly cannot see the folder, as on a machine that lacks the shared mount.
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import ray

from tests.conftest import run_cli

RAY = Path(sys.executable).with_name("ray")


def alive_nodes() -> int:
    return sum(n["Alive"] for n in ray.nodes())


def wait_for(condition, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


@pytest.fixture
def ray_dir():
    """The cluster's own Ray temp folder (short: Ray's socket paths must fit in 107 bytes). `ray start`
    records its cluster there, not in /tmp/ray, where every later `ray.init()` on this machine would join it."""
    folder = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def head(ray_dir):
    """A one-CPU Ray head started here (no dashboard); its GCS address."""
    ray.init(num_cpus=1, num_gpus=0, include_dashboard=False, object_store_memory=80 * 1024 * 1024,
             log_to_driver=False, logging_level="ERROR", _temp_dir=ray_dir)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def test_a_node_that_cannot_see_the_sweep_folder_is_refused_in_one_line(tmp_path, ray_dir, head):
    shared = tmp_path / "shared"  # "the NFS mount": the head node sees it, the second node does not
    shared.mkdir()
    log = tmp_path / "node.log"
    with open(log, "w") as out:
        node = subprocess.Popen(["unshare", "-m", "sh", "-c", f'mount -t tmpfs tmpfs "{shared}" && exec "{RAY}" '
                                 f'start --address {head} --temp-dir {ray_dir} --num-cpus 1 --block '
                                 f'--disable-usage-stats'], stdout=out, stderr=subprocess.STDOUT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    sweep = ["sweep", "--out", shared / "sw", "--model", "mlp", "--pairs", "1", "--set", "ticks=2",
             "--ray-address", head, "--quiet"]
    try:
        wait_for(lambda: alive_nodes() == 2 or node.poll() is not None, "the second node did not join")
        assert node.poll() is None, log.read_text()
        me = ray.get_runtime_context().get_node_id()
        second = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] != me)
        blind = run_cli(*sweep, env=env)
        assert blind.returncode == 2 and blind.stderr.count("\n") == 1, blind.stderr
        assert "cannot see" in blind.stderr and str(shared / "sw") in blind.stderr
        assert f"node {second[:8]}" in blind.stderr and blind.stderr.count("(node ") == 1  # the head sees it
        assert list(shared.iterdir()) == []  # nothing written
    finally:
        node.send_signal(signal.SIGTERM)  # `ray start --block` stops its node's processes
        node.wait(timeout=120)
    wait_for(lambda: alive_nodes() == 1, "the second node did not leave")
    seen = run_cli(*sweep, env=env)  # the same sweep with only the head, which sees the folder
    assert seen.returncode == 0, seen.stderr
    assert (shared / "sw" / "runs" / "seed1-seed2" / "run.json").exists()
