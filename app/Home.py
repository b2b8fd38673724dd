"""LLPF Explorer's dashboard: ``streamlit run app/Home.py``.

This file is the frame: page config, the shared sidebar and the navigation over ``views/``, one file a
page. The folder is not called ``pages/``: Streamlit would also auto-discover a ``pages/`` folder as an
old-style multipage app, and a deep link such as /runs?run=NAME opened first on a fresh server then ran
that page on its own, without this frame.
"""
import state
import streamlit as st

from llpf_core import workspace_dir

st.set_page_config(page_title="LLPF Explorer", page_icon=":material/route:", layout="wide")

page = st.navigation([
    st.Page("views/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("views/modes.py", title="Modes", icon=":material/neurology:"),
    st.Page("views/search.py", title="Search", icon=":material/route:"),
    st.Page("views/runs.py", title="Runs (live)", icon=":material/monitoring:"),
    st.Page("views/explore.py", title="Explore", icon=":material/travel_explore:"),
    st.Page("views/compare.py", title="Compare", icon=":material/compare:"),
    st.Page("views/methods.py", title="Methods", icon=":material/stacked_line_chart:"),
])

with st.sidebar:
    st.text_input("Workspace folder", value=str(workspace_dir()), key=state.WORKSPACE,
                  help="Holds modes/, runs/ and data/ ($LLPF_HOME, default ./llpf-workspace).")
    machine = st.container()

page.run()

# After the page: the device and the jobs need torch, whose first import takes seconds, and the page's
# own text should not wait for it.
with machine:
    st.caption(state.device_label())
    live = [job for job in state.registry().jobs() if job.live]
    if live:
        st.caption("Background jobs: " + ", ".join(j.name for j in live))
