"""Uploaded mode files: a safe name inside modes/, validated before it appears there. No Streamlit here."""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from llpf_core import Mode, UserError, import_state, load_mode

SUFFIX = ".safetensors"


def safe_name(name: str) -> str:
    """The file name alone (no folders, so ``../../x`` cannot escape), in plain characters."""
    base = re.split(r"[\\/]", name)[-1]
    stem = base[:-len(SUFFIX)] if base.lower().endswith(SUFFIX) else base
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).lstrip("._-")[:100]
    if not stem:
        raise UserError(f"the file name {name!r} has no usable characters; rename it, e.g. mode-a.safetensors")
    return stem + SUFFIX


def save_upload(data: bytes, name: str, modes_dir: Path) -> Mode:
    """Validate an uploaded file exactly as the CLI would, then move it into ``modes_dir``.

    The bytes go to a hidden temp file first; a file that is not a valid mode (a pickle, a corrupt
    or truncated file, one without llpf metadata) is deleted and never unpickled, and nothing
    already in the folder is touched.
    """
    target = modes_dir / safe_name(name)
    if target.exists():
        raise UserError(f"{target.name} already exists in the workspace; rename the file or delete the old one")
    modes_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=modes_dir, prefix=".upload-", suffix=SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        load_mode(tmp, "mode file")  # its messages name the temp file: replaced by the upload's name below
        os.replace(tmp, target)
    except UserError as e:
        raise UserError(str(e).replace(tmp, target.name)) from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    return load_mode(target)


def import_upload(data: bytes | None, name: str, model: str, dataset: str, out_name: str,
                  modes_dir: Path) -> Mode:
    """Import a state dict (the uploaded bytes, or with ``data`` None the server file ``name``) as the mode
    ``out_name`` in ``modes_dir``; nothing appears there unless it fits the model."""
    target = modes_dir / safe_name(out_name)
    if target.exists():
        raise UserError(f"{target.name} already exists in the workspace; choose another name")
    if data is None:
        return import_state(name, model, dataset, target)
    with tempfile.TemporaryDirectory(prefix=".import-") as tmp:
        path = Path(tmp) / safe_name(name)
        path.write_bytes(data)
        try:
            return import_state(path, model, dataset, target, source=Path(name).name)
        except UserError as e:
            raise UserError(str(e).replace(str(path), Path(name).name)) from None
