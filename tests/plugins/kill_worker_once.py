"""Test plugin (the sweep kill test passes it): a run folder holding a ``.kill-at`` file naming a tick makes
the process that logs that tick SIGKILL itself once, as a crashed Ray worker would. Without the file it
does nothing. The fault comes from here, not from the engine: the plugin wraps the driver's logging."""
import os
import signal
from pathlib import Path

from llpf_core import driver

_log = driver.Driver._log


def _log_then_maybe_die(self, step, prev, force_eval=False):
    _log(self, step, prev, force_eval)
    trigger, marker = Path(self.writer.path, ".kill-at"), Path(self.writer.path, ".killed")
    if trigger.exists() and not marker.exists() and step.row["tick"] == int(trigger.read_text()):
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)


driver.Driver._log = _log_then_maybe_die
