"""Methods: every run on one pair of endpoints overlaid by position along its path, with a cost table."""
import pandas as pd
import plotly.graph_objects as go
import state
import streamlit as st

st.title("Methods side by side")
runs = [r for r in (state.read_run(p) for p in state.run_dirs()) if r is not None and r.info.get("end")]
pairs: dict[tuple, list] = {}
for run in runs:
    key = (run.info["start"]["sha256"], run.info["end"]["sha256"])
    pairs.setdefault(key, []).append(run)
if not pairs:
    st.info("No runs between two modes yet: start one on the Search page or with `connect --algorithm ...`.")
    st.stop()


def _label(key: tuple) -> str:
    first = pairs[key][0].info
    return f"{first['start']['path']} -> {first['end']['path']} ({len(pairs[key])} runs)"


key = st.selectbox("Endpoints", list(pairs), format_func=_label, key="methods_pair")
loss, acc = go.Figure(), go.Figure()
rows = []
for run in pairs[key]:
    path = run.path_table
    summary = run.info.get("summary", {})
    label = f"{run.info['algorithm']} ({run.name})"
    if len(path):
        loss.add_trace(go.Scatter(x=path["position"], y=path["train_loss"], name=label, mode="lines+markers"))
        acc.add_trace(go.Scatter(x=path["position"], y=path["test_acc"], name=label, mode="lines+markers"))
    if summary.get("barrier") is not None:
        loss.add_hline(y=summary["barrier"], line_dash="dot", annotation_text=f"barrier {run.info['algorithm']}")
    barrier, top = summary.get("barrier"), summary.get("path_max_train_loss")
    rows.append({"method": run.info["algorithm"], "run": run.name, "path max": top, "barrier": barrier,
                 "ratio": top / barrier if top is not None and barrier else None,
                 "path length": summary.get("path_length"), "SGD steps": summary.get("sgd_steps"),
                 "wall s": summary.get("wall_s")})
loss.update_layout(title="Train loss along the path", xaxis_title="position", yaxis_title="train loss")
acc.update_layout(title="Test accuracy along the path", xaxis_title="position", yaxis_title="test acc")
left, right = st.columns(2)
left.plotly_chart(loss, use_container_width=True)
right.plotly_chart(acc, use_container_width=True)
st.dataframe(pd.DataFrame(rows), hide_index=True, use_container_width=True)
