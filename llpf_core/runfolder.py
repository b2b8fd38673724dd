"""Run folders (design.md section 4): writing them crash-safely, and reading them back.

run.json and every safetensors file are replaced atomically (temp file, fsync, rename). CSV rows
are appended and flushed one tick at a time; on resume, rows after the checkpoint's tick are cut off,
so every tick appears exactly once.
"""
import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from .config import SearchConfig
from .errors import UserError
from .modefile import Mode, load_mode, now_iso
from .safefile import read_tensors, save_tensors, write_atomic, write_json

RUN_FORMAT = "run/1"
METRICS_COLUMNS = ["tick", "stage", "phase", "iterations", "train_loss_rolling", "train_acc_rolling",
                   "train_loss", "train_acc", "test_loss", "test_acc", "distance", "distance_rel",
                   "continuity_max_loss", "wall_s"]
LAYERS_COLUMNS = ["tick", "layer", "distance", "distance_rel", "variance", "variance_rel", "norm",
                  "cosine_to_start"]
CONTINUITY_COLUMNS = ["tick", "alpha", "loss", "acc"]
BASELINE_COLUMNS = ["alpha", "train_loss", "train_acc", "test_loss", "test_acc"]
TABLES = {"metrics": METRICS_COLUMNS, "layers": LAYERS_COLUMNS, "continuity": CONTINUITY_COLUMNS}


class RunWriter:
    """Owns one run folder while a search writes it."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.info: dict = {}
        self._files: dict[str, object] = {}

    # run.json
    def create(self, info: dict) -> None:
        try:
            (self.path / "points").mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create run folder {self.path}: {e.strerror}") from None
        self.info = {"format": RUN_FORMAT, **info, "created": now_iso()}
        self.update(status="running", error=None)

    def reopen(self) -> None:
        self.info = read_run_json(self.path)

    def update(self, **fields) -> None:
        self.info.update(fields, updated=now_iso())
        write_json(self.path / "run.json", self.info)

    # CSV tables
    def append(self, table: str, rows: list[dict]) -> None:
        if not rows:
            return
        f = self._files.get(table)
        if f is None:
            path = self.path / f"{table}.csv"
            new = not path.exists() or path.stat().st_size == 0
            f = self._files[table] = open(path, "a", newline="")
            if new:
                f.write(",".join(TABLES[table]) + "\n")
        writer = csv.DictWriter(f, TABLES[table], extrasaction="ignore")
        writer.writerows({k: _fmt(v) for k, v in row.items()} for row in rows)
        f.flush()

    def truncate_after(self, tick: int) -> None:
        """Drop CSV rows of ticks after ``tick`` (written after the checkpoint a resume starts from)."""
        for table in TABLES:
            path = self.path / f"{table}.csv"
            if not path.exists():
                continue
            lines = path.read_text().splitlines(keepends=True)
            if not lines:
                continue
            # A torn last line (no newline: killed mid-write) is dropped with the rows after the tick.
            kept = [lines[0]] + [ln for ln in lines[1:] if ln.endswith("\n") and _row_tick(ln) <= tick]
            write_atomic(path, "".join(kept).encode())
        for point in (self.path / "points").glob("[0-9]*.safetensors"):
            if int(point.stem) > tick:
                point.unlink()

    def write_baseline(self, rows: list[dict]) -> None:
        frame = pd.DataFrame(rows, columns=BASELINE_COLUMNS)
        write_atomic(self.path / "baseline.csv", frame.to_csv(index=False).encode())

    # tensors
    def save_point(self, tick: int, state: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
        save_tensors(self.path / "points" / f"{tick:06d}.safetensors", state, metadata)

    def save_checkpoint(self, tensors: dict[str, torch.Tensor], info: dict) -> None:
        """The safetensors file is the truth (its metadata holds ``info``); checkpoint.json mirrors it
        for people, so a kill between the two writes cannot pair a state with the wrong tick."""
        for f in self._files.values():  # rows up to this tick are on disk before the checkpoint is
            os.fsync(f.fileno())
        save_tensors(self.path / "checkpoint.safetensors", tensors, {"llpf.checkpoint": json.dumps(info)})
        write_json(self.path / "checkpoint.json", info)

    def load_checkpoint(self) -> tuple[dict[str, torch.Tensor], dict] | None:
        path = self.path / "checkpoint.safetensors"
        if not path.exists():
            return None
        tensors, meta = read_tensors(path, "checkpoint")
        return tensors, json.loads(meta["llpf.checkpoint"])

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


def _fmt(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    return v


def _row_tick(line: str) -> int:
    return int(line.split(",", 1)[0])


def read_run_json(path: Path) -> dict:
    file = Path(path) / "run.json"
    if not file.is_file():
        raise UserError(f"{path} is not a run folder (no run.json)")
    try:
        info = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{file} is not valid JSON ({e}); the run folder is damaged") from None
    if info.get("format") != RUN_FORMAT:
        raise UserError(f"{file} has format {info.get('format')!r}, expected {RUN_FORMAT!r}")
    return info


@dataclass
class Run:
    """A run folder read back: ``load_run(path)``."""
    path: Path
    info: dict

    @property
    def name(self) -> str:
        return self.info["name"]

    @property
    def status(self) -> str:
        return self.info["status"]

    @property
    def error(self) -> str | None:
        return self.info.get("error")

    @property
    def config(self) -> SearchConfig:
        return SearchConfig.from_dict(self.info["config"])

    def _table(self, name: str, columns: list[str]) -> pd.DataFrame:
        path = self.path / f"{name}.csv"
        if not path.exists() or path.stat().st_size == 0:
            return pd.DataFrame(columns=columns)
        return pd.read_csv(path)

    @property
    def metrics(self) -> pd.DataFrame:
        return self._table("metrics", METRICS_COLUMNS)

    @property
    def layers(self) -> pd.DataFrame:
        return self._table("layers", LAYERS_COLUMNS)

    @property
    def continuity(self) -> pd.DataFrame:
        return self._table("continuity", CONTINUITY_COLUMNS)

    @property
    def baseline(self) -> pd.DataFrame:
        return self._table("baseline", BASELINE_COLUMNS)

    def points(self) -> list[tuple[int, Path]]:
        """Saved path points as (tick, file), in tick order."""
        files = sorted((self.path / "points").glob("[0-9]*.safetensors"))
        return [(int(f.stem), f) for f in files]

    def point(self, tick: int) -> Mode:
        path = self.path / "points" / f"{tick:06d}.safetensors"
        if not path.exists():
            raise UserError(f"run {self.name} has no saved point at tick {tick}; saved ticks: "
                            f"{', '.join(str(t) for t, _ in self.points()[:10])} ...")
        return load_mode(path, "point file")


def load_run(path: str | os.PathLike) -> Run:
    path = Path(path)
    return Run(path=path, info=read_run_json(path))
