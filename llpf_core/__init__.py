"""LLPF Explorer's engine: find and check low-loss paths between independently trained modes.

The public API (docs/python-api.md) is re-exported here; the app and users import only this. The
names load on first use (PEP 562): ``import llpf_core`` costs milliseconds, and torch is imported only
by what needs it, so the CLI's ``--help`` and the dashboard's first page answer at once.
"""
from importlib import import_module
from typing import TYPE_CHECKING

from .version import __version__  # noqa: F401  (in __all__, built below)

# Each public name and the module that defines it.
_EXPORTS = {
    "checks": ["INDEPENDENCE_THRESHOLD", "Independence", "independence", "run_summary"],
    "comparison": ["method_label", "method_table", "path_bands", "sweep_runs"],
    "config": ["BridgeSpec", "ContinuitySpec", "CurveSpec", "Phase", "SearchConfig", "TrainSpec", "apply_overrides",
               "method_settings", "validate"],
    "presets": ["GENERIC_M2M", "PresetInfo", "default_preset", "generic_m2m", "list_presets", "load_preset",
                "preset_info"],
    "resolve": ["Resolved", "resolve_config"],
    "methods.registry": ["MethodInfo", "get_method", "list_methods", "register_method"],
    "methods.base": ["Method", "MethodContext", "Step", "TrainedCurve"],
    "driver": ["TickEvent"],
    "search": ["ORIGIN", "check_compatible", "run_search"],
    "batched": ["Pair", "run_batched"],
    "data": ["ImageData", "list_datasets", "load_dataset"],
    "errors": ["UserError"],
    "landscape": ["Landscape", "compute_landscape", "list_landscapes", "load_landscape", "project_pair_runs",
                  "same_pair_runs"],
    "flow": ["follow_data_flow", "match_layers"],
    "layerwise": ["Layerwise", "compute_layerwise", "load_layerwise"],
    "importer": ["import_state"],
    "modefile": ["Mode", "ModeMeta", "load_mode", "save_mode"],
    "registry": ["build_model", "list_models", "register_model"],
    "runfolder": ["Run", "load_run"],
    "sanity": ["chance_warning"],
    "sweepfolder": ["read_sweep"],
    "train": ["GENERIC_RECIPE", "TrainRecipe", "default_recipe", "list_recipes", "load_recipe", "train_mode"],
    "workspace": ["data_dir", "workspace_dir"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(["__version__", *_MODULE_OF])


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what static analysers and IDEs see; at run time the names load lazily above
    from .batched import Pair, run_batched  # noqa: F401
    from .checks import INDEPENDENCE_THRESHOLD, Independence, independence, run_summary  # noqa: F401
    from .comparison import method_label, method_table, path_bands, sweep_runs  # noqa: F401
    from .config import (  # noqa: F401
        BridgeSpec,
        ContinuitySpec,
        CurveSpec,
        Phase,
        SearchConfig,
        TrainSpec,
        apply_overrides,
        method_settings,
        validate,
    )
    from .data import ImageData, list_datasets, load_dataset  # noqa: F401
    from .driver import TickEvent  # noqa: F401
    from .errors import UserError  # noqa: F401
    from .flow import follow_data_flow, match_layers  # noqa: F401
    from .importer import import_state  # noqa: F401
    from .landscape import (  # noqa: F401
        Landscape,
        compute_landscape,
        list_landscapes,
        load_landscape,
        project_pair_runs,
        same_pair_runs,
    )
    from .layerwise import Layerwise, compute_layerwise, load_layerwise  # noqa: F401
    from .methods.base import Method, MethodContext, Step, TrainedCurve  # noqa: F401
    from .methods.registry import MethodInfo, get_method, list_methods, register_method  # noqa: F401
    from .modefile import Mode, ModeMeta, load_mode, save_mode  # noqa: F401
    from .presets import (  # noqa: F401
        GENERIC_M2M,
        PresetInfo,
        default_preset,
        generic_m2m,
        list_presets,
        load_preset,
        preset_info,
    )
    from .registry import build_model, list_models, register_model  # noqa: F401
    from .resolve import Resolved, resolve_config  # noqa: F401
    from .runfolder import Run, load_run  # noqa: F401
    from .sanity import chance_warning  # noqa: F401
    from .search import ORIGIN, check_compatible, run_search  # noqa: F401
    from .sweepfolder import read_sweep  # noqa: F401
    from .train import GENERIC_RECIPE, TrainRecipe, default_recipe, list_recipes, load_recipe, train_mode  # noqa: F401
    from .workspace import data_dir, workspace_dir  # noqa: F401
