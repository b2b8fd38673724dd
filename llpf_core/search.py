"""``run_search``: start or resume a run of any registered path method (docs/python-api.md).

It checks the inputs (the endpoints, the config, a resumed folder against its run.json and its mode
files) before any work, then hands the run to the driver (driver.py), which owns everything else.
"""
import threading
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

from .config import SearchConfig, validate
from .device import out_of_memory_is_user_error
from .driver import OOM_HINT, Driver, TickEvent, check_device_type, read_checkpoint
from .errors import UserError
from .methods.registry import get_method
from .modefile import Mode, load_mode, versions
from .runfolder import Run, load_run, read_run_json
from .safefile import file_sha256

ORIGIN = "origin"


def _endpoint(mode: Mode | None) -> dict | None:
    if mode is None:
        return None
    # absolute (symlinks kept), so that later readers (landscape, checks, the dashboard) find them from any cwd
    return {"path": str(Path(mode.path).absolute()) if mode.path else None,
            "sha256": file_sha256(mode.path) if mode.path else None,
            "meta": {k: v for k, v in asdict(mode.meta).items() if k != "extra"}}


def _as_mode(x: Mode | str | Path | None, what: str) -> Mode | None:
    if x is None or (isinstance(x, str) and x == ORIGIN):
        return None
    return x if isinstance(x, Mode) else load_mode(x, f"{what} mode file")


def check_compatible(start: Mode, end: Mode | None, cfg: SearchConfig) -> None:
    """Refuse pairs that cannot be connected, before any work starts."""
    info = get_method(cfg.algorithm)
    if end is None:
        if info.needs_end:
            raise UserError(f"algorithm {cfg.algorithm} needs an end mode, not 'origin'")
        return
    a, b = start.meta, end.meta
    if a.model != b.model or a.model_kwargs != b.model_kwargs:
        raise UserError(f"the modes have different architectures: {a.model} {a.model_kwargs} vs "
                        f"{b.model} {b.model_kwargs}; connect two modes of the same model")
    if a.dataset != b.dataset:
        raise UserError(f"the modes were trained on different datasets ({a.dataset} vs {b.dataset})")
    if start.path and end.path and file_sha256(start.path) == file_sha256(end.path):
        raise UserError("start and end are the same mode; pick two independently trained modes")
    check = getattr(info.build, "check", None)
    if check is not None:
        check(start, end, cfg)  # the method's own refusals (rebasin: a model without a permutation spec)


def _resumed(out_dir: Path, start, end, device: str | None):
    """(info, cfg, start mode, end mode, checkpoint, thresholds) of a run folder to resume."""
    info = read_run_json(out_dir)
    cfg = SearchConfig.from_dict(info["config"])
    for what in ("start", "end"):
        stored = info[what]
        if stored and stored["sha256"] and (not stored["path"] or not Path(stored["path"]).is_file()
                                            or file_sha256(Path(stored["path"])) != stored["sha256"]):
            raise UserError(f"--resume: the {what} mode file {stored['path']} is missing or has changed "
                            f"since the run started; restore it to continue")
    start_mode = load_mode(info["start"]["path"], "start mode file")
    end_mode = load_mode(info["end"]["path"], "end mode file") if info["end"] else None
    for given, stored, what in ((start, info["start"], "start"), (end, info["end"], "end")):
        given_mode = _as_mode(given, what) if given is not None else None
        if given_mode is not None and given_mode.path and stored and file_sha256(given_mode.path) != stored["sha256"]:
            raise UserError(f"--resume: the {what} mode differs from the one this run started with "
                            f"({stored['path']})")
    if device is not None:
        cfg = replace(cfg, device=device)
    checkpoint = read_checkpoint(out_dir)
    if checkpoint is not None:
        check_device_type(checkpoint[1], info, cfg.device)
    # The loss thresholds the run used (runs from before loss_floor_factor used their loss_threshold as given).
    thresholds = {k: v["used"] for k, v in info["loss_thresholds"].items()} if "loss_thresholds" in info else \
        {"train": cfg.train.loss_threshold, "bridge.train": cfg.bridge.train.loss_threshold}
    return info, cfg, start_mode, end_mode, checkpoint, thresholds


def run_search(start: Mode | str | Path | None, end: Mode | str | Path | None,
               config: SearchConfig | None, out_dir: str | Path, *,
               on_tick: Callable[[TickEvent], None] | None = None,
               stop_event: threading.Event | None = None, pause_event: threading.Event | None = None,
               resume: bool = False, data_root: str | Path | None = None,
               device: str | None = None) -> Run:
    """Run (or resume) ``config.algorithm``'s path, blocking until it finishes or ``stop_event`` is set.

    A stop or a pause ends the current unit of work early (an LLPF tick within ``train.INTERRUPT_EVERY``
    SGD steps). While ``pause_event`` is set, the run checkpoints, is marked ``paused`` and waits
    (holding its memory) until the event is cleared or ``stop_event`` is set.

    ``end`` is a mode, or ``"origin"``/None for M2O. With ``resume=True`` and an existing run folder,
    the run continues from its checkpoint with the config stored in run.json (``start``, ``end`` and
    ``config`` may then be None). ``device`` replaces the config's device (also on resume; a checkpoint
    continues only on the device type that wrote it). Returns the run folder, read back.
    """
    prepared = prepare_search(start, end, config, out_dir, on_tick=on_tick, stop_event=stop_event,
                              pause_event=pause_event, resume=resume, data_root=data_root, device=device)
    if isinstance(prepared, Run):
        return prepared
    driver, checkpoint = prepared
    driver.run(checkpoint)
    return load_run(out_dir)


def prepare_search(start: Mode | str | Path | None, end: Mode | str | Path | None,
                   config: SearchConfig | None, out_dir: str | Path, *,
                   on_tick: Callable[[TickEvent], None] | None = None,
                   stop_event: threading.Event | None = None, pause_event: threading.Event | None = None,
                   resume: bool = False, data_root: str | Path | None = None,
                   device: str | None = None) -> "Run | tuple[Driver, tuple | None]":
    """``run_search`` up to the run itself: the checked inputs, the driver set up and its folder open.
    Returns the finished run (a resumed one that is already done), or (driver, checkpoint to continue from)."""
    out_dir = Path(out_dir)
    exists = (out_dir / "run.json").exists()
    if exists and not resume:
        raise UserError(f"run folder {out_dir} already exists; pass --resume to continue it or choose "
                        f"another --out")
    checkpoint = thresholds = None
    if exists:
        if read_run_json(out_dir)["status"] == "finished":
            return load_run(out_dir)
        _, cfg, start_mode, end_mode, checkpoint, thresholds = _resumed(out_dir, start, end, device)
    else:
        if config is None:
            raise UserError("run_search needs a config for a new run")
        cfg = config if device is None else replace(config, device=device)
        start_mode, end_mode = _as_mode(start, "start"), _as_mode(end, "end")
        if start_mode is None:
            raise UserError("the start mode cannot be 'origin'")
    validate(cfg)
    check_compatible(start_mode, end_mode, cfg)
    # Set-up puts the endpoints, the data and the evaluator on the device, so it can run out of memory;
    # nothing is written yet, so a new run can start again in the same folder.
    with out_of_memory_is_user_error(f"setting up the search on {cfg.device}: {OOM_HINT}"):
        driver = Driver(out_dir, cfg, start_mode, end_mode, data_root, on_tick, stop_event, pause_event,
                        thresholds)
    driver.open(None if exists else {"name": out_dir.name, "algorithm": cfg.algorithm,
                                     "start": _endpoint(start_mode), "end": _endpoint(end_mode),
                                     "config": cfg.to_dict(), "versions": versions()})
    return driver, checkpoint
