"""Presets: JSON files in assets/presets/ holding a description, the model and dataset they were tuned
for, and a ``SearchConfig``; and the generic M2M for models without one."""
import json
from dataclasses import dataclass
from pathlib import Path

from .config import ContinuitySpec, Phase, SearchConfig, TrainSpec, validate
from .errors import UserError
from .resources import ASSETS_DIR

PRESET_DIR = ASSETS_DIR / "presets"


@dataclass(frozen=True)
class PresetInfo:
    name: str
    description: str
    model: str
    dataset: str
    algorithm: str
    default: bool  # the preset `connect` picks for this model, dataset and algorithm family


def _preset_path(name: str) -> Path:
    path = Path(name)
    if path.suffix == ".json" and path.is_file():
        return path
    path = PRESET_DIR / f"{name}.json"
    if not path.is_file():
        raise UserError(f"unknown preset {name!r}; choose one of: {', '.join(p.name for p in list_presets())}")
    return path


def _read_preset(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read preset {path}: {e}") from None
    for key in ("description", "model", "dataset", "config"):
        if key not in data:
            raise UserError(f"preset {path} lacks the key {key!r}")
    return data


def list_presets() -> list[PresetInfo]:
    out = []
    for path in sorted(PRESET_DIR.glob("*.json")):
        data = _read_preset(path)
        out.append(PresetInfo(path.stem, data["description"], data["model"], data["dataset"],
                              data["config"].get("algorithm", "m2m"), bool(data.get("default"))))
    return out


def preset_info(name: str) -> PresetInfo:
    path = _preset_path(name)
    data = _read_preset(path)
    return PresetInfo(path.stem, data["description"], data["model"], data["dataset"],
                      data["config"].get("algorithm", "m2m"), bool(data.get("default")))


def load_preset(name: str) -> SearchConfig:
    """A preset's ``SearchConfig``, by name (assets/presets/NAME.json) or by path to a JSON file."""
    path = _preset_path(name)
    cfg = SearchConfig.from_dict(_read_preset(path)["config"])
    validate(cfg)
    return cfg


GENERIC_M2M = "generic-m2m"  # the name runs record when no preset fits the model


def generic_m2m() -> SearchConfig:
    """M2M for any model without a preset (a plugin's): one phase moving every layer 2% of the remaining
    distance per tick for 300 ticks (0.3% of it left at the end), evaluated every 10 ticks."""
    cfg = SearchConfig(algorithm="m2m", ticks=300, phases=[Phase(layers=["*"], step_a=0.02)], merge_bias=True,
                       variance_target="blend",
                       train=TrainSpec(lr=0.01, batch_size=32, loss_threshold=0.01, min_iters=5, max_iters=50),
                       eval_every=10, save_every=50, checkpoint_every=50,
                       continuity=ContinuitySpec(points=10, samples=500, every=10))
    validate(cfg)
    return cfg


def default_preset(model: str, dataset: str, algorithm: str) -> str | None:
    """The default preset for this model and dataset: the method's preset family (``MethodInfo.preset_family``):
    M2M presets serve m2m, cross_sphere and the methods beside LLPF (their evaluation settings), M2O presets
    m2o and to_vs. Falls back to a default for the model on another dataset."""
    from .methods.registry import get_method
    m2o = get_method(algorithm).preset_family == "m2o"
    family = ("m2o", "to_vs") if m2o else ("m2m", "cross_sphere")
    candidates = [p for p in list_presets() if p.default and p.model == model and p.algorithm in family]
    exact = [p for p in candidates if p.dataset == dataset]
    chosen = exact or candidates
    return chosen[0].name if chosen else None
