"""Golden runs: the numbers of an ``m2m`` run (the digits default preset), a ``bezier`` run, a short
``cross_sphere`` run (the to_vs bridge, then M2M) and a short M2O run to the origin do not move.

The expected files were recorded with the CLI before the engine was split into a method registry and one
run driver (issue 23); the mode files are stored beside them, so the runs depend on no training code.
They were recorded with one CPU thread (more threads sum in another order). Wall-clock columns are left out; every other column must match to rtol 1e-5.
"""
import os

import pandas as pd
import pytest

from conftest import REPO, run_cli

GOLDEN = REPO / "tests" / "golden"
A, B = GOLDEN / "mlp-seed1.safetensors", GOLDEN / "mlp-seed2.safetensors"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # as recorded: one thread sums in one order
RUNS = {
    "m2m": [B],  # the digits MLP's default preset, unchanged (300 ticks)
    "bezier": [B, "--algorithm", "bezier", "--set", "curve.steps=300", "--set", "curve.points=7",
               "--set", "checkpoint_every=100"],
    "cross_sphere": [B, "--algorithm", "cross_sphere", "--ticks", "60", "--set", "bridge.ticks=60"],
    "m2o": ["origin", "--ticks", "60"],
}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_the_golden_run_gives_the_recorded_tables(tmp_path, name):
    out = tmp_path / name
    run_cli("connect", A, *RUNS[name][:1], "--out", out, "--device", "cpu", "--quiet", *RUNS[name][1:],
            env=ENV, check=True)
    expected_files = sorted((GOLDEN / name).glob("*.csv"))
    assert "path.csv" in {f.name for f in expected_files}
    for expected in expected_files:
        got = pd.read_csv(out / expected.name)
        got = got.drop(columns=[c for c in got.columns if c == "wall_s"])
        pd.testing.assert_frame_equal(got, pd.read_csv(expected), rtol=1e-5, check_dtype=False,
                                      obj=f"{name}/{expected.name}")


def test_the_golden_cross_sphere_bridge_reaches_the_sphere_at_the_recorded_tick(tmp_path):
    from llpf_core import load_run
    run_cli("connect", A, B, "--out", tmp_path / "cs", "--device", "cpu", "--quiet", *RUNS["cross_sphere"][1:],
            env=ENV, check=True)
    sphere = load_run(tmp_path / "cs").info["sphere"]
    assert (sphere["stage"], sphere["ticks"], sphere["reached"], sphere["farthest_layer"]) == \
        ("to_vs", 44, True, "layers.1.bias")
    assert sphere["ratio"] == pytest.approx(1.0190645456314087, rel=1e-5)
