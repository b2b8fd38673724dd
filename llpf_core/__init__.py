"""LLPF Explorer's engine: find and check low-loss paths between independently trained modes.

The public API (design.md section 6) is re-exported here; the app and users import only this.
"""
from . import models as _models  # noqa: F401  (registers the model families)
from .config import (
                     ALGORITHMS,
                     BridgeSpec,
                     ContinuitySpec,
                     Phase,
                     PresetInfo,
                     SearchConfig,
                     TrainSpec,
                     apply_overrides,
                     default_preset,
                     list_presets,
                     load_preset,
                     preset_info,
                     validate,
)
from .connect import ORIGIN, TickEvent, run_search
from .data import ImageData, list_datasets, load_dataset
from .errors import UserError
from .flow import follow_data_flow, match_layers
from .modefile import Mode, ModeMeta, load_mode, save_mode
from .registry import build_model, list_models, register_model
from .runfolder import Run, load_run
from .version import __version__

__all__ = [
    "ALGORITHMS", "BridgeSpec", "ContinuitySpec", "ImageData", "Mode", "ModeMeta", "ORIGIN", "Phase",
    "PresetInfo", "Run", "SearchConfig", "TickEvent", "TrainSpec", "UserError", "__version__",
    "apply_overrides", "build_model", "default_preset", "follow_data_flow", "list_datasets",
    "list_models", "list_presets", "load_dataset", "load_mode", "load_preset", "load_run",
    "match_layers", "preset_info", "register_model", "run_search", "save_mode", "validate",
]
