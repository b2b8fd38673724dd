"""bench/landscape_speed.py runs end to end on a tiny grid, so that the script cannot rot unseen."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_landscape_bench_dry_run(tmp_path):
    proc = subprocess.run([sys.executable, "bench/landscape_speed.py", "--case", "digits", "--grid", "3",
                           "--ticks", "2", "--work-dir", tmp_path], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (result,) = json.loads(proc.stdout.splitlines()[-1])
    assert result["case"] == "digits" and result["grid"] == 3 and result["samples"]["train"] == 1437
    assert result["engine_s"] > 0 and result["plain_loop_s"] > 0 and result["naive_loop_s"] > 0
    assert "speed-up" in proc.stdout
    assert (tmp_path / "digits-run" / "landscape").is_dir()
