"""The Modes page's import form through Streamlit's AppTest: a DataParallel state dict uploaded and
imported as a mode; a state dict of the wrong shape refused in one line, with nothing written."""
import sys

import pytest
import torch
from safetensors.torch import save
from streamlit.testing.v1 import AppTest
from torch import nn

from llpf_core import build_model, load_mode
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "app"))  # as `streamlit run app/Home.py` does for the app's modules


@pytest.fixture
def ws(tmp_path, monkeypatch):
    monkeypatch.setenv("LLPF_HOME", str(tmp_path))
    (tmp_path / "modes").mkdir()
    return tmp_path


def _import(state: dict[str, torch.Tensor], name: str) -> AppTest:
    at = AppTest.from_file(str(REPO / "app" / "views" / "modes.py"), default_timeout=60).run()
    assert not at.exception
    at.file_uploader(key="import_upload").upload("user-script.safetensors", save(state))
    at.selectbox(key="import_model").select("mlp")
    at.selectbox(key="import_dataset").select("digits")
    at.text_input(key="import_name").input(name)
    next(b for b in at.button if b.label == "Import").click()
    return at.run()


def test_import_form_imports_a_state_dict(ws):
    torch.manual_seed(0)
    state = nn.DataParallel(build_model("mlp", num_classes=10, in_channels=1, image_size=8)).state_dict()
    at = _import(state, "mine.safetensors")
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert "imported mine.safetensors" in at.success[-1].value
    mode = load_mode(ws / "modes" / "mine.safetensors")
    assert mode.meta.train_config["imported"] and mode.meta.train_config["source"] == "user-script.safetensors"
    assert 0 < mode.meta.metrics["test_acc"] < 0.5  # an untrained network, evaluated


def test_import_form_refuses_a_wrong_shape(ws):
    state = build_model("mlp", num_classes=10, in_channels=1, image_size=8, hidden=[32]).state_dict()
    at = _import(state, "bad.safetensors")
    assert not at.exception
    assert "wrong shape" in at.error[0].value and "user-script.safetensors" in at.error[0].value
    assert "\n" not in at.error[0].value
    assert not list((ws / "modes").iterdir())
