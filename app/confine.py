"""Where a visitor may read and write: a workspace inside the root fixed at server start. No Streamlit here.

The root is ``LLPF_HOME`` (``workspace_dir()``); a visitor chooses a workspace inside it by name or
subfolder path. Paths are compared after resolving symlinks, so ``..`` and a symlink that leaves the root
are refused like an absolute path elsewhere, before anything is created.

Every other path a visitor types (data folders, import paths, preset files, sweep datasets) follows one
rule, ``visitor_path``: inside their workspace, or inside a folder the operator shares with every visitor
($LLPF_SHARED_PATHS). Anything else gets the same refusal whether it exists or not, so the refusal tells
nothing about the server's file system (docs/threat-model.md).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from llpf_core import UserError

MAX_WORKSPACE_CHARS = 120
_WORKSPACE_PART = re.compile(r"[\w .-]{1,64}")  # letters (any script), digits, space, dot, underscore, dash
_USER_DATA = ("folder:", "tensors:")


def inside(path: Path, root: Path) -> bool:
    """``path`` (symlinks followed) is ``root`` or lies under it."""
    return Path(path).resolve().is_relative_to(Path(root).resolve())


def resolve_workspace(root: Path, choice: str) -> Path:
    """The workspace that ``choice`` names inside ``root`` (empty: the root itself); creates nothing.

    Refuses, with a one-line UserError, anything that resolves outside the root.
    """
    choice = choice.strip()
    if choice and (len(choice) > MAX_WORKSPACE_CHARS or not all(
            _WORKSPACE_PART.fullmatch(part) for part in choice.strip("/").split("/"))):
        raise UserError(f"a workspace is a name or subfolder path of letters, digits, spaces, '.', '_' and '-' "
                        f"(at most {MAX_WORKSPACE_CHARS} characters, 64 a part), got {choice[:40]!r}"
                        f"{'...' if len(choice) > 40 else ''}; choose a plain name such as your own")
    path = Path(root) / choice if choice else Path(root)  # an absolute choice replaces the root here
    if not inside(path, root):
        raise UserError(f"workspace {choice!r} is outside the server's workspace root {Path(root).resolve()}; "
                        f"give a name or subfolder inside it (to use another root, restart the server "
                        f"with another LLPF_HOME)")
    return path


def shared_paths() -> list[Path]:
    """The folders the operator shares with every visitor: $LLPF_SHARED_PATHS, ``os.pathsep``-separated."""
    return [Path(p).resolve() for p in os.environ.get("LLPF_SHARED_PATHS", "").split(os.pathsep) if p.strip()]


def visitor_path(text: str, workspace: Path, what: str) -> Path:
    """The resolved path that ``text`` (typed by a visitor) names: relative to ``workspace``, or absolute.

    Refuses, with the same one line whatever exists there, anything that is not inside ``workspace`` or a
    shared folder once symlinks are followed; nothing is read or created.
    """
    text = text.strip()
    try:
        path = Path(text) if Path(text).is_absolute() else Path(workspace) / text
        resolved = path.resolve()
        allowed = [Path(workspace).resolve(), *shared_paths()]
    except (OSError, RuntimeError, ValueError):  # a NUL byte, a symlink loop, a name too long
        resolved, allowed = None, []
    too_long = len(text) > 1000 or any(len(part.encode()) > 255 for part in Path(text).parts)
    if not text or too_long or resolved is None or not any(resolved.is_relative_to(root) for root in allowed):
        raise UserError(f"the {what} {text[:80]!r} is not inside your workspace or a folder this server shares; "
                        f"give a path inside your workspace, e.g. data/NAME (the server's operator can share "
                        f"more folders with LLPF_SHARED_PATHS)")
    return resolved


def visitor_data(text: str, workspace: Path) -> str:
    """The visitor's own data: a folder (train/<class>/..., test/...) or a .safetensors tensor file, typed as a
    path or as ``folder:PATH``/``tensors:PATH``, confined by ``visitor_path``; the engine's dataset name
    (``folder:``/``tensors:`` and the resolved path)."""
    text = text.strip()
    prefix = next((p for p in _USER_DATA if text.startswith(p)), None)
    path = visitor_path(text[len(prefix):] if prefix else text, workspace, "data path")
    return f"{prefix or ('tensors:' if path.suffix.lower() == '.safetensors' else 'folder:')}{path}"


def visitor_dataset(text: str, workspace: Path) -> str:
    """A dataset field: a built-in dataset's name as it is (the engine refuses an unknown one), else
    ``visitor_data``."""
    text = text.strip()
    if text.startswith(_USER_DATA) or "/" in text or "\\" in text or text.lower().endswith(".safetensors"):
        return visitor_data(text, workspace)
    return text


def plain_name(name: str, what: str = "run name") -> str:
    """A single folder name (no slashes, not starting with a dot), so it cannot leave its parent folder."""
    if not name or "/" in name or "\\" in name or name.startswith(".") or "\0" in name:
        raise UserError(f"the {what} must be a plain folder name (no slashes, not starting with a dot), "
                        f"got {name!r}")
    return name
