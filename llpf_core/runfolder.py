"""Run folders (docs/formats.md, Run folder): writing them crash-safely, and reading them back.

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
from .readers import RESTART, check_schema, damaged, generator_state, parse_csv, parse_json, read_csv, read_json
from .safefile import (
    DIGEST_KEY,
    TMP_SUFFIX,
    os_error,
    read_header,
    read_tensors,
    save_tensors,
    write_atomic,
    write_json,
)

RUN_FORMAT = "run/1"
METRICS_COLUMNS = ["tick", "stage", "phase", "iterations", "train_loss_rolling", "train_acc_rolling",
                   "train_loss", "train_acc", "test_loss", "test_acc", "distance", "distance_rel",
                   "continuity_max_loss", "wall_s"]
LAYERS_COLUMNS = ["tick", "layer", "distance", "distance_rel", "variance", "variance_rel", "norm",
                  "cosine_to_start"]
CONTINUITY_COLUMNS = ["tick", "alpha", "loss", "acc"]
BASELINE_COLUMNS = ["alpha", "train_loss", "train_acc", "test_loss", "test_acc"]
TABLES = {"metrics": METRICS_COLUMNS, "layers": LAYERS_COLUMNS, "continuity": CONTINUITY_COLUMNS}
# Per table: the columns that hold text, and those no row may leave empty (read_csv checks the rest are numbers).
TEXT_COLUMNS = {"metrics": ("stage", "phase"), "layers": ("layer",)}
REQUIRED_COLUMNS = {"metrics": ("tick",), "layers": ("tick", "layer"), "continuity": ("tick", "alpha"),
                    "path": ("index", "tick", "position"), "baseline": ("alpha",)}
_ENDPOINT = {"path": (str, None), "sha256": (str, None), "meta": {"model": str, "model_kwargs": dict, "dataset": str}}
RUN_SCHEMA = {"format": str, "name": str, "status": str, "algorithm": str, "start": _ENDPOINT,
              "end": (None, _ENDPOINT), "config": dict, "error?": (str, None), "device_used": str,
              "loss_thresholds?": dict, "summary?": (dict, None), "path_length?": (float, None),
              "sgd_steps?": (int, None), "wall_s?": (float, None), "stopped_early?": (str, None),
              "sphere?": (None, {"stage": str, "ticks": int, "reached": bool, "note?": (str, None)})}
_THRESHOLD = {"used": float, "configured": float, "loss_floor_factor": float, "endpoint_train_loss": float}
CHECKPOINT_FILE = "checkpoint.safetensors"
CHECKPOINT_INFO_FILE = "checkpoint.json"  # the checkpoint's info, for people and progress readers
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
        """Drop CSV rows of ticks after ``tick`` (written after the checkpoint a resume starts from).

        Every table is read and checked before any is rewritten: a damaged row before ``tick`` is a
        ``UserError`` that leaves the folder as it was."""
        kept = {}
        for table in TABLES:
            path = self.path / f"{table}.csv"
            if not path.exists():
                continue
            try:
                raw = path.read_bytes()
            except OSError as e:
                raise os_error(e, "read", path) from None
            try:
                parts = raw.decode("utf-8").split("\n")  # splitlines would also cut a row at a flipped-in \f
            except UnicodeDecodeError:
                raise damaged(path, "not UTF-8 text", RESTART) from None
            lines = [part + "\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
            if not lines:
                continue
            # A torn last line (no newline: killed mid-write) is dropped with the rows after the tick.
            kept[path] = [lines[0]] + [ln for ln in lines[1:] if ln.endswith("\n") and _row_tick(ln, path) <= tick]
            parse_csv("".join(kept[path]), path, TABLES[table], text=TEXT_COLUMNS.get(table, ()),
                      required=REQUIRED_COLUMNS.get(table, ()))
        points = [p for p in (self.path / "points").glob("[0-9]*.safetensors") if p.stem.isdigit()]
        for point in points:  # the points kept make the path at the end: a damaged one fails now, not then
            if int(point.stem) <= tick:
                read_header(point, "point file", f"it is damaged; {RESTART}")
        for path, lines in kept.items():
            write_atomic(path, "".join(lines).encode())
        for point in points:
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
        save_tensors(self.path / CHECKPOINT_FILE, tensors, {"llpf.checkpoint": json.dumps(info)}, digest=True)
        write_json(self.path / CHECKPOINT_INFO_FILE, info)

    def load_checkpoint(self) -> tuple[dict[str, torch.Tensor], dict] | None:
        """The checkpoint's tensors and info, or None when there is none; a damaged one is one ``UserError``."""
        path = self.path / CHECKPOINT_FILE
        return read_checkpoint(path) if path.exists() else None

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


def _row_tick(line: str, path: Path) -> int:
    try:
        return int(line.split(",", 1)[0])
    except ValueError:
        raise damaged(path, f"a row starts with {line.split(',', 1)[0][:20]!r}, not a tick", RESTART) from None


# Random-generator states in checkpoints, by key: the device type whose generator wrote them (None: the
# device type the checkpoint records). A run driver that adds keys adds them here.
GENERATOR_KEYS = {"torch_rng": "cpu", "torch.rng": "cpu", "cuda_rng": "cuda", "stream/rng": None, "stream.rng": None}


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """A checkpoint file's tensors and its ``llpf.checkpoint`` info, checked as far as the file alone
    allows: the info is a JSON object, and every generator state fits its device type. What a method
    reads from it beyond that goes through ``readers.checkpoint_errors``."""
    tensors, meta = read_tensors(path, "checkpoint", f"it is damaged; {RESTART}")
    if "llpf.checkpoint" not in meta:
        raise damaged(path, "its metadata lacks llpf.checkpoint", RESTART)
    unknown = sorted(set(meta) - {"llpf.checkpoint", DIGEST_KEY})  # e.g. a checksum's key with a flipped bit
    if unknown:
        raise damaged(path, f"its metadata has the unknown key {unknown[0][:40]!r}", RESTART)
    info = parse_json(meta["llpf.checkpoint"], path, "llpf.checkpoint")
    check_schema(info, {"device_type?": str}, path, where="llpf.checkpoint")
    device_type = info.get("device_type")  # absent in checkpoints from before it was recorded
    if device_type not in (None, "cpu", "cuda"):
        raise damaged(path, f"llpf.checkpoint names the device type {device_type[:20]!r}", RESTART)
    for key, tensor in tensors.items():  # a CUDA state is checked where it is restored, on a machine with a GPU
        if key in GENERATOR_KEYS and (GENERATOR_KEYS[key] or device_type) == "cpu":
            generator_state(tensor, "cpu", path, key)
    return tensors, info


def read_run_json(path: Path) -> dict:
    file = Path(path) / "run.json"
    if not file.is_file():
        raise UserError(f"{path} is not a run folder (no run.json)")
    info = read_json(file, RUN_SCHEMA)
    if info["format"] != RUN_FORMAT:
        raise UserError(f"{file} has format {info['format'][:40]!r}, expected {RUN_FORMAT!r}")
    for spec, record in info.get("loss_thresholds", {}).items():
        check_schema(record, _THRESHOLD, file, where=f"loss_thresholds.{spec}")
    try:  # a plugin method's settings are checked when its plugin is loaded (a resume needs it anyway)
        SearchConfig.from_dict(info["config"], plugins_loaded=False)
    except UserError as e:
        raise damaged(file, f"config: {e}", RESTART) from None
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
        return SearchConfig.from_dict(self.info["config"], plugins_loaded=False)

    def _table(self, name: str, columns: list[str]) -> pd.DataFrame:
        return read_csv(self.path / f"{name}.csv", columns, text=TEXT_COLUMNS.get(name, ()),
                        required=REQUIRED_COLUMNS.get(name, ()))

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

    @property
    def checkpoint_progress(self) -> tuple[int, int] | None:
        """(units done, units planned) at the last checkpoint, from checkpoint.json; None when there is no
        readable one. The progress of a method whose rows come at its end (bezier, autoneb)."""
        try:
            info = json.loads((self.path / CHECKPOINT_INFO_FILE).read_text())
            done, total = info["tick"], info["total"]
        except (OSError, ValueError, TypeError, KeyError):
            return None
        ok = all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (done, total))
        return (done, total) if ok else None

    def points(self) -> list[tuple[int, Path]]:
        """Saved path points as (tick, file), in tick order."""
        files = sorted((self.path / "points").glob("[0-9]*.safetensors"))
        return [(int(f.stem), f) for f in files if f.stem.isdigit()]

    def point(self, tick: int) -> Mode:
        path = self.path / "points" / f"{tick:06d}.safetensors"
        if not path.exists():
            raise UserError(f"run {self.name} has no saved point at tick {tick}; saved ticks: "
                            f"{', '.join(str(t) for t, _ in self.points()[:10])} ...")
        return load_mode(path, "point file")


def load_run(path: str | os.PathLike) -> Run:
    path = Path(path)
    return Run(path=path, info=read_run_json(path))
