"""The package and the CLI's help load without torch; the zoo's lazy table matches its modules (issue 18.2)."""
import importlib
import pkgutil
import subprocess
import sys

import llpf_core
from llpf_core import models, registry
from tests.conftest import REPO


def modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys; print(' '.join(sys.modules))"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_import_llpf_core_loads_no_torch():
    loaded = modules_after("import llpf_core; from llpf_core import UserError, workspace_dir, __version__")
    assert "torch" not in loaded and "pandas" not in loaded and "ray" not in loaded


def test_cli_help_loads_no_torch():
    loaded = modules_after("from llpf_core.cli import build_parser\n"
                           "import contextlib, io\n"
                           "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
                           "    build_parser().parse_args(['sweep', '--help'])")
    assert "torch" not in loaded and "ray" not in loaded


def test_a_public_name_loads_on_first_use():
    loaded = modules_after("import llpf_core; llpf_core.build_model('mlp')")
    assert "torch" in loaded and "torchvision" not in loaded  # the MLP's family needs no torchvision


def test_every_public_name_resolves():
    for name in llpf_core.__all__:
        assert getattr(llpf_core, name) is not None, name
    assert set(llpf_core.__all__) <= set(dir(llpf_core))


def test_the_zoo_table_names_every_registered_family():
    for info in pkgutil.iter_modules(models.__path__):
        importlib.import_module(f"llpf_core.models.{info.name}")
    zoo = {name for name, fn in registry._MODELS.items() if fn.__module__.startswith("llpf_core.models.")}
    assert zoo == set(models.ZOO)
    for name, module in models.ZOO.items():
        assert registry._MODELS[name].__module__ == f"llpf_core.models.{module}"
