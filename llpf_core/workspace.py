"""Workspace folders (docs/formats.md, Workspace): ``$LLPF_HOME`` or ./llpf-workspace, with modes/, runs/, data/."""
import os
from pathlib import Path


def workspace_dir() -> Path:
    return Path(os.environ.get("LLPF_HOME", "llpf-workspace"))


def data_dir() -> Path:
    """The default data root for torchvision datasets."""
    return workspace_dir() / "data"
