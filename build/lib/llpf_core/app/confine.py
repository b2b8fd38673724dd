"""Where a visitor may read and write: a workspace inside the root fixed at server start. No Streamlit here.

The root is ``LLPF_HOME`` (``workspace_dir()``); a visitor chooses a workspace inside it by name or
subfolder path. Paths are compared after resolving symlinks, so ``..`` and a symlink that leaves the root
are refused like an absolute path elsewhere, before anything is created.
"""
from __future__ import annotations

from pathlib import Path

from llpf_core import UserError

SUBFOLDERS = ("modes", "runs", "data")


def inside(path: Path, root: Path) -> bool:
    """``path`` (symlinks followed) is ``root`` or lies under it."""
    return Path(path).resolve().is_relative_to(Path(root).resolve())


def resolve_workspace(root: Path, choice: str) -> Path:
    """The workspace that ``choice`` names inside ``root`` (empty: the root itself); creates nothing.

    Refuses, with a one-line UserError, anything that resolves outside the root.
    """
    choice = choice.strip()
    path = Path(root) / choice if choice else Path(root)  # an absolute choice replaces the root here
    if not inside(path, root):
        raise UserError(f"workspace {choice!r} is outside the server's workspace root {Path(root).resolve()}; "
                        f"give a name or subfolder inside it (to use another root, restart the server "
                        f"with another LLPF_HOME)")
    return path


def create_workspace(path: Path) -> Path:
    """Make the workspace's modes/, runs/ and data/ (for a path ``resolve_workspace`` returned)."""
    for sub in SUBFOLDERS:
        (path / sub).mkdir(parents=True, exist_ok=True)
    return path


def plain_name(name: str, what: str = "run name") -> str:
    """A single folder name (no slashes, not starting with a dot), so it cannot leave its parent folder."""
    if not name or "/" in name or "\\" in name or name.startswith(".") or "\0" in name:
        raise UserError(f"the {what} must be a plain folder name (no slashes, not starting with a dot), "
                        f"got {name!r}")
    return name
