"""Mode files (design.md section 3): a model's state_dict as safetensors plus ``llpf.*`` metadata."""
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from .errors import UserError
from .registry import build_model, list_models, plugin_of
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
        plugin = plugin_of(self.model)
        if plugin:  # loading the mode needs the plugin: name it
            meta["llpf.plugin"] = json.dumps(plugin)
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
    if "llpf.plugin" in meta.extra and meta.model not in list_models():
        plugin = json.loads(meta.extra["llpf.plugin"])
        raise UserError(f"{path}: model {meta.model!r} comes from the plugin {plugin['path']} (sha256 "
                        f"{plugin['sha256'][:12]}...), which is not loaded; pass --plugin {plugin['path']} "
                        f"or add it to LLPF_PLUGINS")
    try:
        model = build_model(meta.model, **meta.model_kwargs)
    except (UserError, ValueError) as e:
        raise UserError(f"{path}: cannot rebuild its model: {e}") from None
    check_state(tensors, model, f"{path}: tensors do not match model {meta.model!r}")
    model.load_state_dict(tensors)
    return Mode(model=model, meta=meta, path=path)


def _some(names: list[str]) -> str:
    return f"{', '.join(names[:3])}{f' and {len(names) - 3} more' if len(names) > 3 else ''}"


def check_state(tensors: dict[str, torch.Tensor], model: nn.Module, what: str, check_dtype: bool = True) -> None:
    """One ``UserError`` starting with ``what`` unless ``tensors`` has exactly the model's keys and shapes
    (and dtypes): it names the missing, unexpected and wrongly shaped tensors, with the shapes expected."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    shapes = [f"{k} {tuple(tensors[k].shape)}, model expects {tuple(expected[k].shape)}"
              for k in expected if k in tensors and tensors[k].shape != expected[k].shape]
    parts = [f"missing {_some(missing)}" if missing else "",
             f"unexpected {_some(unexpected)}" if unexpected else "",
             f"wrong shape {_some(shapes)}" if shapes else ""]
    if any(parts):
        raise UserError(f"{what} ({'; '.join(p for p in parts if p)})")
    if check_dtype:
        for k, v in expected.items():
            if tensors[k].dtype != v.dtype:
                raise UserError(f"{what}: tensor {k} has dtype {tensors[k].dtype}, expected {v.dtype}")
