"""``llpf dashboard``: the Streamlit app shipped with the package, served from any folder.

The server's settings are in ``app/.streamlit/config.toml`` (Streamlit reads a config file beside the main
script); the flags here only override the port, the address and the workspace.
"""
import argparse
import os
import subprocess
import sys
from pathlib import Path

from .errors import UserError
from .plugins import ENV as PLUGINS_ENV
from .resources import APP_DIR

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def streamlit_command(port: int | None, address: str | None, extra: list[str], served: bool = False) -> list[str]:
    """The ``python -m streamlit run .../Home.py ...`` argument list for these options; ``served`` runs
    ``serve.py`` instead: Home behind the gate, with Streamlit's developer options off (docs/threat-model.md)."""
    home = APP_DIR / ("serve.py" if served else "Home.py")
    if not home.is_file():
        raise UserError(f"the dashboard is missing from this installation ({home} not found); "
                        f"reinstall with `pip install llpf-explorer` or run from a checkout")
    command = [sys.executable, "-m", "streamlit", "run", str(home)]
    if port is not None:
        command += ["--server.port", str(port)]
    if address is not None:
        command += ["--server.address", address]
    return command + extra


def is_served(env: dict, address: str | None) -> bool:
    """Served to others (an access token, or listening beyond this machine): then the gated frame, never
    the bare app."""
    return bool(env.get("LLPF_ACCESS_TOKEN")) or (address is not None and address not in LOOPBACK)


def run_dashboard(args: argparse.Namespace) -> int:
    """Serve the dashboard until Ctrl-C; the workspace is $LLPF_HOME unless ``--workspace`` names one."""
    env = dict(os.environ)
    if args.workspace:
        workspace = Path(args.workspace).expanduser().resolve()
        if workspace.exists() and not workspace.is_dir():
            raise UserError(f"--workspace {args.workspace} is a file, not a folder; name a folder (it is created)")
        env["LLPF_HOME"] = str(workspace)
    if args.plugin:  # the dashboard's processes read plugins from the environment
        env[PLUGINS_ENV] = ":".join([*filter(None, [env.get(PLUGINS_ENV)]),
                                            *(str(Path(p).resolve()) if p.endswith(".py") else p for p in args.plugin)])
    served = is_served(env, args.address)
    process = subprocess.Popen(streamlit_command(args.port, args.address, args.streamlit_args, served), env=env)
    try:
        return process.wait()
    except KeyboardInterrupt:  # Streamlit got the same Ctrl-C and is stopping
        return process.wait()
