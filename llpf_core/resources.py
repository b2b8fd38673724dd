"""Where the files shipped with LLPF Explorer live: the presets, recipes and digits data under ``assets/``
and the dashboard under ``app/``.

In a checkout they sit at the repository root, beside ``llpf_core/``; an installed package (``pip install
.``) carries them inside ``llpf_core/`` (pyproject.toml maps them there), so both layouts are looked up.
"""
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _shipped(name: str) -> Path:
    inside = _PACKAGE / name
    return inside if inside.is_dir() else _PACKAGE.parent / name


ASSETS_DIR = _shipped("assets")
APP_DIR = _shipped("app")
