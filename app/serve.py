"""The dashboard served to others: ``streamlit run app/serve.py`` (``app/Home.py`` behind the gate).

``streamlit run app/Home.py`` stays the single-user way on one's own machine. This frame adds what a
served instance needs (docs/threat-model.md): the gate in front of Streamlit's endpoints (gate.py),
Streamlit's developer options off (no developer menu, no tracebacks in the page: the server's log keeps
them), and a umask that keeps every file the server and its jobs write private to its user (0600/0700).
"""
import os

os.umask(0o077)  # first: llpf_core.safefile reads the umask when it is imported

import streamlit as st  # noqa: E402
from access import ACCESS  # noqa: E402
from gate import Gate  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402
from streamlit import config  # noqa: E402

SERVED_OPTIONS = {
    "client.toolbarMode": "viewer",  # no developer menu (Clear cache, Rerun, Settings), on localhost too
    "client.showErrorDetails": "none",  # a crash shows a generic message; the details go to the log
    "global.developmentMode": False,
    "server.enableXsrfProtection": True,
    "server.enableCORS": True,
}
for key, value in SERVED_OPTIONS.items():
    config.set_option(key, value, "app/serve.py")

ACCESS.cookie_required = True  # the gate gives every browser its cookie; a session id alone grants nothing
app = st.App("Home.py", middleware=[Middleware(Gate)])
