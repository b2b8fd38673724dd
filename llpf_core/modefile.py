"""Mode files (design.md section 3): a model's state_dict as safetensors plus ``llpf.*`` metadata."""
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from .errors import UserError
from .registry import build_model
from .safefile import read_tensors, save_tensors
from .version import __version__

MODE_FORMAT = "mode/1"
_REQUIRED = ("llpf.format", "llpf.model", "llpf.model_kwargs", "llpf.dataset")


@dataclass
class ModeMeta:
    model: str
    model_kwargs: dict
    dataset: str
    seed: int | None = None
    train_config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    created: str = ""
    versions: dict = field(default_factory=dict)
    format: str = MODE_FORMAT
    extra: dict = field(default_factory=dict)  # other llpf.* keys, e.g. llpf.tick of a path point

    def to_metadata(self) -> dict[str, str]:
        meta = {
            "llpf.format": self.format,
            "llpf.model": self.model,
            "llpf.model_kwargs": json.dumps(self.model_kwargs),
            "llpf.dataset": self.dataset,
            "llpf.seed": "" if self.seed is None else str(self.seed),
            "llpf.train_config": json.dumps(self.train_config),
            "llpf.metrics": json.dumps(self.metrics),
            "llpf.created": self.created or now_iso(),
            "llpf.versions": json.dumps(self.versions or versions()),
        }
        meta.update({k: str(v) for k, v in self.extra.items()})
        return meta

    @classmethod
    def from_metadata(cls, meta: dict[str, str], path: Path) -> "ModeMeta":
        missing = [k for k in _REQUIRED if k not in meta]
        if missing:
            raise UserError(f"{path} is a safetensors file but not an LLPF mode: metadata lacks "
                            f"{', '.join(missing)}; create modes with `python -m llpf_core train`")
        try:
            known = {"llpf.format", "llpf.model", "llpf.model_kwargs", "llpf.dataset", "llpf.seed",
                     "llpf.train_config", "llpf.metrics", "llpf.created", "llpf.versions"}
            return cls(
                model=meta["llpf.model"], model_kwargs=json.loads(meta["llpf.model_kwargs"]),
                dataset=meta["llpf.dataset"],
                seed=int(meta["llpf.seed"]) if meta.get("llpf.seed") else None,
                train_config=json.loads(meta.get("llpf.train_config") or "{}"),
                metrics=json.loads(meta.get("llpf.metrics") or "{}"),
                created=meta.get("llpf.created", ""),
                versions=json.loads(meta.get("llpf.versions") or "{}"),
                format=meta["llpf.format"],
                extra={k: v for k, v in meta.items() if k.startswith("llpf.") and k not in known},
            )
        except (ValueError, TypeError) as e:
            raise UserError(f"{path} has malformed llpf metadata ({e}); re-create the file") from None


@dataclass
class Mode:
    """A loaded mode: the rebuilt model with its weights, and the file's metadata."""
    model: nn.Module
    meta: ModeMeta
    path: Path | None = None


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def versions() -> dict[str, str]:
    return {"torch": torch.__version__, "llpf_core": __version__}


def save_mode(path: str | os.PathLike, model: nn.Module | dict[str, torch.Tensor], meta: ModeMeta) -> None:
    """Write a mode (or a path point) atomically. ``model`` may also be a state dict."""
    state = model.state_dict() if isinstance(model, nn.Module) else model
    save_tensors(path, state, meta.to_metadata())


def load_mode(path: str | os.PathLike, what: str = "mode file") -> Mode:
    """Load and validate a mode or point file; every problem is a one-line ``UserError``."""
    path = Path(path)
    tensors, metadata = read_tensors(path, what)
    meta = ModeMeta.from_metadata(metadata, path)
    try:
        model = build_model(meta.model, **meta.model_kwargs)
    except (UserError, ValueError) as e:
        raise UserError(f"{path}: cannot rebuild its model: {e}") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        detail = "; ".join(part for part in (
            f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}" if missing else "",
            f"unexpected {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}" if unexpected else "",
        ) if part)
        raise UserError(f"{path}: tensors do not match model {meta.model!r} ({detail})")
    for k, v in expected.items():
        if tensors[k].shape != v.shape:
            raise UserError(f"{path}: tensor {k} has shape {tuple(tensors[k].shape)} but model "
                            f"{meta.model!r} expects {tuple(v.shape)}")
        if tensors[k].dtype != v.dtype:
            raise UserError(f"{path}: tensor {k} has dtype {tensors[k].dtype}, expected {v.dtype}")
    model.load_state_dict(tensors)
    return Mode(model=model, meta=meta, path=path)
