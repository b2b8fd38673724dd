"""Run folders (design.md section 4): writing them crash-safely, and reading them back.

run.json and every safetensors file are replaced atomically (temp file, fsync, rename). CSV rows
are appended in whole lines, written out at most ``FLUSH_S`` seconds after they were added and
always before a checkpoint, a status change or the end; on resume, rows after the checkpoint's tick
are cut off, so every tick appears exactly once. A failed read or write (disk full, no permission) is a one-line
``UserError`` naming the path.
"""
import csv
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from .config import SearchConfig
from .errors import UserError
from .modefile import Mode, load_mode, now_iso
from .safefile import TMP_SUFFIX, os_error, read_tensors, save_tensors, write_atomic, write_json

RUN_FORMAT = "run/1"
METRICS_COLUMNS = ["tick", "stage", "phase", "iterations", "train_loss_rolling", "train_acc_rolling",
                   "train_loss", "train_acc", "test_loss", "test_acc", "distance", "distance_rel",
                   "continuity_max_loss", "wall_s"]
LAYERS_COLUMNS = ["tick", "layer", "distance", "distance_rel", "variance", "variance_rel", "norm",
                  "cosine_to_start"]
CONTINUITY_COLUMNS = ["tick", "alpha", "loss", "acc"]
BASELINE_COLUMNS = ["alpha", "train_loss", "train_acc", "test_loss", "test_acc"]
TABLES = {"metrics": METRICS_COLUMNS, "layers": LAYERS_COLUMNS, "continuity": CONTINUITY_COLUMNS}
FLUSH_S = 0.5  # rows wait at most this long in memory: live readers lag by no more, and fast runs
#               don't pay a write per tick


class RunWriter:
    """Owns one run folder while a search writes it."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.info: dict = {}
        self._files: dict[str, object] = {}
        self._rows = {table: io.StringIO() for table in TABLES}  # CSV lines not written yet
        self._csv = {table: csv.writer(buffer, lineterminator="\n") for table, buffer in self._rows.items()}
        self._written = time.monotonic()

    # run.json
    def create(self, info: dict) -> None:
        try:
            (self.path / "points").mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise os_error(e, "create run folder", self.path) from None
        self.info = {"format": RUN_FORMAT, **info, "created": now_iso()}
        self.update(status="running", error=None)

    def reopen(self) -> None:
        """Read run.json back and delete temp files that a killed writer left behind."""
        self.info = read_run_json(self.path)
        for tmp in [*self.path.glob(f".*{TMP_SUFFIX}"), *self.path.glob(f"points/.*{TMP_SUFFIX}")]:
            try:
                tmp.unlink(missing_ok=True)
            except OSError as e:
                raise os_error(e, "delete", tmp) from None

    def update(self, **fields) -> None:
        self.flush()  # a reader that sees the new status sees every row before it
        self.info.update(fields, updated=now_iso())
        write_json(self.path / "run.json", self.info)

    # CSV tables
    def append(self, table: str, rows: list[dict]) -> None:
        columns = TABLES[table]
        self._csv[table].writerows([_fmt(row.get(c)) for c in columns] for row in rows)
        if time.monotonic() - self._written >= FLUSH_S:
            self.flush()

    def flush(self) -> None:
        """Write the rows waiting in memory, whole lines in one write per table."""
        self._written = time.monotonic()
        for table, buffer in self._rows.items():
            lines = buffer.getvalue()
            if not lines:
                continue
            path = self.path / f"{table}.csv"
            try:
                f = self._files.get(table)
                if f is None:
                    new = not path.exists() or path.stat().st_size == 0
                    f = self._files[table] = open(path, "a", newline="")
                    if new:
                        lines = ",".join(TABLES[table]) + "\n" + lines
                f.write(lines)
                f.flush()
            except OSError as e:
                self._discard(table)  # a torn last row is cut off by the next resume
                for pending in self._rows.values():  # the run fails here; a resume redoes these ticks
                    _clear(pending)
                raise os_error(e, "append to", path) from None
            _clear(buffer)

    def truncate_after(self, tick: int) -> None:
        """Drop CSV rows of ticks after ``tick`` (written after the checkpoint a resume starts from)."""
        for table in TABLES:
            path = self.path / f"{table}.csv"
            if not path.exists():
                continue
            try:
                lines = path.read_text().splitlines(keepends=True)
            except OSError as e:
                raise os_error(e, "read", path) from None
            if not lines:
                continue
            # A torn last line (no newline: killed mid-write) is dropped with the rows after the tick.
            kept = [lines[0]] + [ln for ln in lines[1:] if ln.endswith("\n") and _row_tick(ln) <= tick]
            write_atomic(path, "".join(kept).encode())
        for point in (self.path / "points").glob("[0-9]*.safetensors"):
            if int(point.stem) > tick:
                try:
                    point.unlink()
                except OSError as e:
                    raise os_error(e, "delete", point) from None

    def write_baseline(self, rows: list[dict]) -> None:
        frame = pd.DataFrame(rows, columns=BASELINE_COLUMNS)
        write_atomic(self.path / "baseline.csv", frame.to_csv(index=False).encode())

    # tensors
    def save_point(self, tick: int, state: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
        save_tensors(self.path / "points" / f"{tick:06d}.safetensors", state, metadata)

    def save_checkpoint(self, tensors: dict[str, torch.Tensor], info: dict) -> None:
        """The safetensors file is the truth (its metadata holds ``info``); checkpoint.json mirrors it
        for people, so a kill between the two writes cannot pair a state with the wrong tick."""
        self.flush()
        for table, f in self._files.items():  # rows up to this tick are on disk before the checkpoint is
            try:
                os.fsync(f.fileno())
            except OSError as e:
                raise os_error(e, "write", self.path / f"{table}.csv") from None
        save_tensors(self.path / "checkpoint.safetensors", tensors, {"llpf.checkpoint": json.dumps(info)})
        write_json(self.path / "checkpoint.json", info)

    def load_checkpoint(self) -> tuple[dict[str, torch.Tensor], dict] | None:
        path = self.path / "checkpoint.safetensors"
        if not path.exists():
            return None
        tensors, meta = read_tensors(path, "checkpoint")
        return tensors, json.loads(meta["llpf.checkpoint"])

    def close(self) -> None:
        try:
            self.flush()
        finally:
            for table in list(self._files):
                self._discard(table)

    def _discard(self, table: str) -> None:
        """Close a CSV file, ignoring a failing close: every row was flushed, or reported as failed,
        when it was written, so nothing is lost, and an error being raised is not masked."""
        f = self._files.pop(table, None)
        if f is not None:
            try:
                f.close()
            except OSError:
                pass


def _fmt(v):
    """CSV cell: None is empty, floats keep every digit (repr); csv.writer quotes where needed."""
    if v is None:
        return ""
    return repr(v) if isinstance(v, float) else v


def _clear(buffer: io.StringIO) -> None:
    buffer.seek(0)
    buffer.truncate()


def _row_tick(line: str) -> int:
    return int(line.split(",", 1)[0])


def read_run_json(path: Path) -> dict:
    file = Path(path) / "run.json"
    if not file.is_file():
        raise UserError(f"{path} is not a run folder (no run.json)")
    try:
        info = json.loads(file.read_text())
    except OSError as e:
        raise os_error(e, "read", file) from None
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
        try:
            text = path.read_text() if path.exists() else ""
        except OSError as e:
            raise os_error(e, "read", path) from None
        text = text[:text.rfind("\n") + 1]  # a line being written right now is not a row yet
        if not text:
            return pd.DataFrame(columns=columns)
        return pd.read_csv(io.StringIO(text))

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

    @property
    def path_table(self) -> pd.DataFrame:
        """path.csv: the evaluated points by position along the path (every finished run has one)."""
        from .pathfile import PATH_COLUMNS
        return self._table("path", PATH_COLUMNS)

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
