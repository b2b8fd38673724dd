"""``llpf dashboard`` serves the gated frame (app/serve.py) whenever others can reach it: with an access
token set, or listening beyond this machine; the bare app only on loopback without a token."""
from pathlib import Path

import pytest

from llpf_core.dashboard import is_served, streamlit_command


@pytest.mark.parametrize("env, address, served", [({}, None, False), ({}, "127.0.0.1", False),
                                                  ({"LLPF_ACCESS_TOKEN": "s3cret"}, None, True),
                                                  ({"LLPF_ACCESS_TOKEN": ""}, "localhost", False),
                                                  ({}, "0.0.0.0", True)])
def test_the_dashboard_is_gated_when_served(env, address, served):
    assert is_served(env, address) == served
    command = streamlit_command(8599, address, [], is_served(env, address))
    script = Path(command[command.index("run") + 1])
    assert script.is_file() and script.name == ("serve.py" if served else "Home.py")
