"""LLPF Explorer's dashboard: ``llpf dashboard``, or ``streamlit run app/Home.py`` in a checkout.

This file is the frame: page config, the shared sidebar and the navigation over ``views/``, one file a
page. The folder is not called ``pages/``: Streamlit would also auto-discover a ``pages/`` folder as an
old-style multipage app, and a deep link such as /runs?run=NAME opened first on a fresh server then ran
that page on its own, without this frame.
"""
import time

import engine_path  # noqa: F401  (first: makes a checkout's llpf_core importable from any folder)
import state
import streamlit as st

from llpf_core import UserError, workspace_dir

st.set_page_config(page_title="LLPF Explorer", page_icon=":material/route:", layout="wide")

state.claim_session()
if not state.access_granted():  # $LLPF_ACCESS_TOKEN: only the prompt until the right token is given
    st.title("LLPF Explorer")
    with st.form("access_form"):
        given = st.text_input("Access token", type="password", key="access_token")
        submitted = st.form_submit_button("Enter")
    if submitted:
        if state.access_granted(given):
            st.rerun()
        time.sleep(1.0)  # slows guessing within a session; access.py limits it across sessions
        wait = state.access_wait_s()
        st.error(f"Too many wrong tokens from your address or in all: try again in {wait:.0f} s." if wait else
                 "Wrong access token: ask whoever runs this server for it.", icon=":material/lock:")
    st.stop()

page = st.navigation([
    st.Page("views/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("views/modes.py", title="Modes", icon=":material/neurology:"),
    st.Page("views/search.py", title="Search", icon=":material/route:"),
    st.Page("views/runs.py", title="Runs (live)", icon=":material/monitoring:"),
    st.Page("views/explore.py", title="Explore", icon=":material/travel_explore:"),
    st.Page("views/compare.py", title="Compare", icon=":material/compare:"),
    st.Page("views/methods.py", title="Methods", icon=":material/alt_route:"),
    st.Page("views/sweeps.py", title="Sweeps", icon=":material/stacked_line_chart:"),
])

with st.sidebar:
    if state.WORKSPACE not in st.session_state:  # a link can give it: ?workspace=alice
        st.session_state[state.WORKSPACE] = st.query_params.get("workspace", "")
    choice = st.text_input("Workspace", key=state.WORKSPACE, placeholder="(the root itself)",
                           help=f"A name or subfolder inside the server's root {workspace_dir().resolve()} "
                                "($LLPF_HOME), e.g. your own name in a class. Holds modes/, runs/ and data/.")
    try:
        state.workspace()
    except UserError as e:
        state.show_error(e)
        st.stop()
    if choice:
        st.query_params["workspace"] = choice
    elif "workspace" in st.query_params:
        del st.query_params["workspace"]
    machine = st.container()

page.run()

# After the page: the device and the jobs need torch, whose first import takes seconds, and the page's
# own text should not wait for it.
with machine:
    st.caption(state.device_label())
    running, waiting, slots = state.registry().counts()
    st.caption(f"Jobs on this server: {running} running of {slots} slot(s), {waiting} queued")
    for j in state.my_jobs():
        if j.live:
            queued = f" (#{j.queue_position} in the queue)" if j.queue_position else ""
            st.caption(f"{state.plain(j.name)}: {j.status}{queued}")
