"""LLPF Explorer's engine: find and check low-loss paths between independently trained modes.

The public API (design.md section 6) is re-exported here; the app and users import only this.
"""
from . import models as _models  # noqa: F401  (registers the model families)
from .checks import INDEPENDENCE_THRESHOLD, Independence, independence, run_summary
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
from .connect import ORIGIN, TickEvent, check_compatible, run_search
from .data import ImageData, list_datasets, load_dataset
from .errors import UserError
from .flow import follow_data_flow, match_layers
from .modefile import Mode, ModeMeta, load_mode, save_mode
from .registry import build_model, list_models, register_model
from .runfolder import Run, load_run
from .train import TrainRecipe, default_recipe, list_recipes, load_recipe, train_mode
from .version import __version__
from .workspace import data_dir, workspace_dir

__all__ = [
    "ALGORITHMS", "INDEPENDENCE_THRESHOLD", "BridgeSpec", "ContinuitySpec", "ImageData", "Independence", "Mode",
    "ModeMeta", "ORIGIN", "Phase", "PresetInfo", "Run", "SearchConfig", "TickEvent", "TrainRecipe", "TrainSpec",
    "UserError",
    "__version__", "apply_overrides", "build_model", "check_compatible", "data_dir", "default_preset",
    "default_recipe", "follow_data_flow", "independence", "list_datasets", "list_models", "list_presets",
    "list_recipes", "load_dataset", "load_mode", "load_preset", "load_recipe", "load_run", "match_layers",
    "preset_info", "register_model", "run_search", "run_summary", "save_mode", "train_mode", "validate",
    "workspace_dir",
]
