"""A job's work in a child process of the server, followed from the job's thread.

The child is a fresh interpreter (spawn: no fork of a threaded server). Its body reports through a
queue: ("progress", ...) events while it works, then ("done", ...) or ("failed", one line). Stop and
pause are process-shared events that the engine checks between units of work; work the engine cannot
stop in the middle (training a mode) is ended by terminating its process.
"""
from __future__ import annotations

import multiprocessing
import os
import queue
import sys
import threading
import traceback
import types
from collections.abc import Callable
from contextlib import contextmanager
from multiprocessing.synchronize import Event

from llpf_core import UserError

SPAWN = multiprocessing.get_context("spawn")
# Leave a core to the dashboard (server and browser): with every core busy, OpenMP's waiting threads
# slowed the digits demo's search by 10x or more on a 2-core machine.
WORK_THREADS = max(1, (os.cpu_count() or 1) - 1)
_START_LOCK = threading.Lock()


class JobStopped(Exception):
    """Stop ended the job's work; the message says where."""


def follow_child(name: str, body: Callable, args: tuple, on_progress: Callable, lost_hint: str,
                 kill_on: Event | None = None) -> tuple:
    """Run ``body(*args, events)`` in a spawned process and follow it: its ("progress", ...) events go to
    ``on_progress``; returns the items of its ("done", ...) event and raises its ("failed", message) as a
    UserError. When ``kill_on`` is set the process is terminated and JobStopped is raised."""
    events = SPAWN.Queue()
    process = SPAWN.Process(target=body, name=f"llpf-{name}", daemon=True, args=(*args, events))
    with _main_script_hidden():
        process.start()
    try:
        while True:
            if kill_on is not None and kill_on.is_set():
                process.terminate()
                process.join()
                raise JobStopped("stopped")
            try:
                kind, *item = events.get(timeout=0.5)
            except queue.Empty:
                if process.is_alive():
                    continue
                raise RuntimeError(f"the process of {name} ended without a word (exit code {process.exitcode}); "
                                   f"{lost_hint}") from None
            if kind == "progress":
                on_progress(*item)
                continue
            process.join()
            if kind == "failed":
                raise UserError(item[0])
            return tuple(item)
    finally:
        events.close()


@contextmanager
def _main_script_hidden():
    """Spawn re-runs the parent's ``__main__`` in the child. Under Streamlit (and AppTest) that is the
    page script being run, which must not run again in a job's process; hide it while the child starts."""
    with _START_LOCK:
        script = sys.modules["__main__"]
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            yield
        finally:
            sys.modules["__main__"] = script


@contextmanager
def failures_reported(events):
    """In a child process: a failure becomes a ("failed", one line) event for the dashboard."""
    try:
        yield
    except UserError as e:
        events.put(("failed", str(e)))
    except BaseException as e:  # noqa: BLE001  (reported to the dashboard; the run folder says failed)
        traceback.print_exc()
        events.put(("failed", f"{type(e).__name__}: {e}"))
