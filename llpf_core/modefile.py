"""Mode files (docs/formats.md, Mode file): a model's state_dict as safetensors plus ``llpf.*`` metadata."""
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from .errors import UserError
from .modecheck import check_shapes, checked_model
from .registry import list_models, plugin_of
from .safefile import read_header, read_tensors, save_tensors
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
        """The metadata parsed and type-checked; any malformed value is one ``UserError``."""
        missing = [k for k in _REQUIRED if k not in meta]
        if missing:
            raise UserError(f"{path} is a safetensors file but not an LLPF mode: metadata lacks "
                            f"{', '.join(missing)}; create modes with `python -m llpf_core train`")
        known = {"llpf.format", "llpf.model", "llpf.model_kwargs", "llpf.dataset", "llpf.seed",
                 "llpf.train_config", "llpf.metrics", "llpf.created", "llpf.versions"}
        seed = meta.get("llpf.seed") or None
        if seed is not None and not (seed.lstrip("-").isdigit() and len(seed) < 20):
            raise UserError(f"{path} has malformed llpf metadata (llpf.seed is {seed[:20]!r}, not a whole number); "
                            f"re-create the file")
        if not meta["llpf.model"] or len(meta["llpf.model"]) > 200:
            raise UserError(f"{path} has malformed llpf metadata (llpf.model is empty or too long); re-create the file")
        return cls(
            model=meta["llpf.model"], model_kwargs=_json_object(meta, "llpf.model_kwargs", path),
            dataset=meta["llpf.dataset"], seed=None if seed is None else int(seed),
            train_config=_json_object(meta, "llpf.train_config", path),
            metrics=_json_object(meta, "llpf.metrics", path),
            created=meta.get("llpf.created", ""),
            versions=_json_object(meta, "llpf.versions", path),
            format=meta["llpf.format"],
            extra={k: v for k, v in meta.items() if k.startswith("llpf.") and k not in known},
        )


def _json_object(meta: dict[str, str], key: str, path: Path) -> dict:
    """The JSON object in metadata ``key`` ({} when absent or empty); anything else is one ``UserError``."""
    try:
        value = json.loads(meta.get(key) or "{}")
    except (ValueError, RecursionError) as e:
        raise UserError(f"{path} has malformed llpf metadata ({key} is not valid JSON: "
                        f"{str(e).splitlines()[0][:100]}); re-create the file") from None
    if not isinstance(value, dict):
        raise UserError(f"{path} has malformed llpf metadata ({key} is a JSON {type(value).__name__}, not an "
                        f"object); re-create the file")
    return value


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
    """Load and validate a mode or point file; every problem is a one-line ``UserError``.

    The metadata is checked against the header's shapes and the parameter budget (``modecheck``)
    before the model is built or any tensor is read."""
    path = Path(path)
    metadata, shapes = read_header(path, what)
    meta = ModeMeta.from_metadata(metadata, path)
    if "llpf.plugin" in meta.extra and meta.model not in list_models():
        plugin = _json_object(meta.extra, "llpf.plugin", path)
        if not all(isinstance(plugin.get(k), str) and plugin[k].isprintable() for k in ("path", "sha256")):
            raise UserError(f"{path} has malformed llpf metadata (llpf.plugin lacks its path or sha256); "
                            f"re-create the file")
        raise UserError(f"{path}: model {meta.model!r} comes from the plugin {plugin['path'][:200]} (sha256 "
                        f"{plugin['sha256'][:12]}...), which is not loaded; pass --plugin {plugin['path'][:200]} "
                        f"or add it to LLPF_PLUGINS")
    model = checked_model(meta.model, meta.model_kwargs, shapes, f"{path}")
    tensors, _ = read_tensors(path, what)
    check_state(tensors, model, f"{path}: tensors do not match model {meta.model!r}")
    model.load_state_dict(tensors)
    return Mode(model=model, meta=meta, path=path)


def check_state(tensors: dict[str, torch.Tensor], model: nn.Module, what: str, check_dtype: bool = True) -> None:
    """One ``UserError`` starting with ``what`` unless ``tensors`` has exactly the model's keys and shapes
    (and dtypes): it names the missing, unexpected and wrongly shaped tensors, with the shapes expected."""
    check_shapes(model, {k: tuple(v.shape) for k, v in tensors.items()}, what)
    if check_dtype:
        for k, v in model.state_dict().items():
            if tensors[k].dtype != v.dtype:
                raise UserError(f"{what}: tensor {k} has dtype {tensors[k].dtype}, expected {v.dtype}")
