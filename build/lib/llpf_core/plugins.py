"""User plugins: Python files or modules that register their own architectures with ``register_model``.

``LLPF_PLUGINS`` (paths or module names separated by ``:``) is read on the registry's first use; the
CLI's ``--plugin`` adds more. A plugin model's mode records the plugin (path and sha256), so loading
the mode without it names the plugin to pass.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path

from .errors import UserError

ENV = "LLPF_PLUGINS"
_loaded: dict[str, dict] = {}  # plugin spec -> {"path", "sha256"}
_current: dict | None = None  # the plugin being imported (its register_model calls are attributed to it)
_env_done = False


def current() -> dict | None:
    """The plugin whose code is running now, or None (the zoo, or user code outside a plugin)."""
    return _current


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_plugin(spec: str) -> dict:
    """Import one plugin (a ``.py`` path or a module name) once; every failure is one ``UserError``."""
    global _current
    spec = spec.strip()
    looks_like_file = spec.endswith(".py") or os.sep in spec
    key = str(Path(spec).resolve()) if looks_like_file else spec
    if key in _loaded:
        return _loaded[key]
    if looks_like_file:
        path = Path(key)
        if not path.is_file():
            raise UserError(f"plugin {spec} does not exist; pass the path of a Python file (--plugin or {ENV})")
        if path.suffix != ".py":
            raise UserError(f"plugin {spec} is not a .py file; pass a Python file or an importable module name")
        # one module name per file: two plugins called models.py in different folders do not collide
        name = f"llpf_plugin_{path.stem}_{hashlib.sha256(key.encode()).hexdigest()[:8]}"
        module_spec = importlib.util.spec_from_file_location(name, path)
    else:
        found = importlib.util.find_spec(spec) if spec else None
        if found is None or found.origin is None:
            raise UserError(f"plugin module {spec!r} cannot be found; pass a .py path or an importable module name")
        module_spec, path = found, Path(found.origin)
    info = {"path": str(path) if looks_like_file else spec, "sha256": _sha256(path)}
    _current = info
    try:
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_spec.name] = module
        module_spec.loader.exec_module(module)
    except UserError:
        sys.modules.pop(module_spec.name, None)
        raise
    except Exception as e:  # the user's code: any failure is theirs to fix
        sys.modules.pop(module_spec.name, None)
        raise UserError(f"plugin {spec} raised {type(e).__name__} on import: {str(e).splitlines()[0] if str(e) else ''}"
                        f"; fix the plugin") from None
    finally:
        _current = None
    _loaded[key] = info
    return info


def load_plugins(specs: list[str] | None = None) -> None:
    """Load ``LLPF_PLUGINS`` (once per process) and then ``specs``."""
    global _env_done
    if not _env_done:
        _env_done = True
        for spec in os.environ.get(ENV, "").split(":"):
            if spec.strip():
                load_plugin(spec)
    for spec in specs or []:
        load_plugin(spec)
