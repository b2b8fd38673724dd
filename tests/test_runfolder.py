"""The run folder's CSV tables: rows are written in whole lines, within FLUSH_S, and always before a
checkpoint or a status change; a reader never takes a line being written for a row."""
import torch

import llpf_core.runfolder as runfolder
from llpf_core import load_run
from llpf_core.runfolder import FLUSH_S, RunWriter


# What run.json holds for any run (a reader refuses one without these).
INFO = {"name": "run", "algorithm": "m2m", "config": {}, "device_used": "cpu",
        "start": {"path": None, "sha256": None, "meta": {"model": "mlp", "model_kwargs": {}, "dataset": "digits"}},
        "end": None}


def ticks_on_disk(path) -> list[int]:
    return list(load_run(path).metrics["tick"])


def test_rows_reach_the_disk_soon_and_before_checkpoints_and_status_changes(tmp_path, monkeypatch):
    path = tmp_path / "run"
    writer = RunWriter(path)
    writer.create(INFO)
    writer.append("metrics", [{"tick": 0, "stage": "m2m", "phase": "m2m:0", "wall_s": 0.0}])
    assert ticks_on_disk(path) == []  # in memory for now
    writer.update(status="paused")
    assert ticks_on_disk(path) == [0]
    writer.append("metrics", [{"tick": 1, "wall_s": 0.1}])
    writer.save_checkpoint({"x": torch.zeros(1)}, {"tick": 1})
    assert ticks_on_disk(path) == [0, 1]
    writer.append("metrics", [{"tick": 2, "wall_s": 0.2}])
    now = runfolder.time.monotonic()
    monkeypatch.setattr(runfolder.time, "monotonic", lambda: now + FLUSH_S)
    writer.append("metrics", [{"tick": 3, "wall_s": 0.3}])
    assert ticks_on_disk(path) == [0, 1, 2, 3]
    writer.append("metrics", [{"tick": 4, "stage": "a,b", "wall_s": 0.4}])  # quoted, not split
    writer.close()
    metrics = load_run(path).metrics
    assert list(metrics["tick"]) == [0, 1, 2, 3, 4] and metrics["stage"].iloc[-1] == "a,b"


def test_a_line_being_written_is_not_read_as_a_row(tmp_path):
    path = tmp_path / "run"
    writer = RunWriter(path)
    writer.create(INFO)
    writer.append("metrics", [{"tick": 0, "wall_s": 0.0}])
    writer.close()
    with open(path / "metrics.csv", "a") as f:
        f.write("1,m2m,m2m:0,7,0.0")  # a writer stopped half-way through the line
    assert ticks_on_disk(path) == [0]
