"""Modes: the trained networks in the workspace; train, upload and check them for independence."""
import logging
import time

import charts
import confine
import state
import streamlit as st
import uploads

from llpf_core import (
    GENERIC_RECIPE,
    INDEPENDENCE_THRESHOLD,
    UserError,
    chance_warning,
    default_recipe,
    independence,
    list_datasets,
    list_models,
    list_recipes,
)

log = logging.getLogger("llpf.modes")
st.title("Modes")
table = state.modes_table()
if len(table):
    # The problems are sentences: below the table in full, not clipped in its last column.
    st.dataframe(table.drop(columns="problem"), hide_index=True, key="modes_table",
                 column_config={c: st.column_config.NumberColumn(format="%.4f")
                                for c in ("train_loss", "train_acc", "test_loss", "test_acc")})
    for row in table[table["problem"] != ""].itertuples():
        st.error(state.plain(f"{row.file}: {row.problem}"), icon=":material/error:")
    for name in table.loc[table["problem"] == "", "file"]:  # a mode that learned nothing, named loudly
        message = chance_warning(state.mode(state.modes_dir() / name).meta, name)
        if message:
            st.warning(state.plain(message), icon=":material/warning:")
else:
    st.info("No modes yet: train some below, upload .safetensors files, or run the demo from Home.")

# --- training ------------------------------------------------------------------------------------------
st.subheader("Train new modes")
with st.form("train_form"):
    c = st.columns(4)
    model = c[0].selectbox("Model", list_models(), index=list_models().index("mlp"), key="train_model")
    dataset = c[1].selectbox("Dataset", list_datasets(), key="train_dataset")
    own_data = st.text_input("Or your own data in your workspace: a folder (train/<class>/*.png, test/...) or "
                             "a tensor file", key="train_own_data", placeholder="data/images or data/set.safetensors")
    seeds_text = c[2].text_input("Seeds", value="1, 2", key="train_seeds", help="comma-separated integers")
    device = c[3].selectbox("Device", ["auto", "cpu", "cuda"], key="train_device")
    recipes = ["(default for the model and dataset)"] + [r["name"] for r in list_recipes()]
    recipe = st.selectbox("Recipe", recipes, key="train_recipe")
    submitted = st.form_submit_button("Train", type="primary")
if submitted:
    try:
        seeds = [int(s) for s in seeds_text.replace(" ", "").split(",") if s]
    except ValueError:
        state.show_error(UserError(f"seeds must be integers separated by commas, got {seeds_text!r}"))
    else:
        try:
            if own_data.strip():
                dataset = confine.visitor_data(own_data, state.workspace())
            name = recipe if recipe in [r["name"] for r in list_recipes()] else default_recipe(model, dataset)
            if name == GENERIC_RECIPE:
                st.info(state.plain(f"No recipe is tuned for {model} on {dataset}: training with the generic one "
                                    f"({next(r['description'] for r in list_recipes() if r['name'] == name)})."))
            state.visitor().start_training(f"train-{model}-{dataset}-{time.strftime('%H%M%S')}", model, dataset,
                                           seeds, name, state.modes_dir(), device=device)
        except UserError as e:
            state.show_error(e)


def training_jobs():
    return [j for j in state.my_jobs() if j.kind == "train"]


@st.fragment(run_every=state.REFRESH_S if any(j.live for j in training_jobs()) else None)
def training_progress() -> None:
    jobs = training_jobs()
    for job in jobs[-5:]:
        if job.live:
            c = st.columns([6, 1])
            c[0].info(f"{state.plain(job.name)}: {state.plain(job.message or job.status)}",
                      icon=":material/hourglass_top:")
            if job.status != "stopping" and c[1].button("Stop", key=f"stop_{job.name}"):
                try:
                    state.visitor().stop(job.name)
                except UserError as e:
                    state.show_error(e)
        elif job.error:
            st.error(f"{state.plain(job.name)} failed: {state.plain(job.error)}")
        elif job.status == "stopped":
            st.warning(f"{state.plain(job.name)}: {state.plain(job.message)}")
        else:
            st.success(f"{state.plain(job.name)}: {state.plain(job.message)}")
    if jobs and not any(j.live for j in jobs) and st.session_state.get("training_seen_live"):
        st.session_state["training_seen_live"] = False
        st.rerun()  # refresh the table with the new modes
    st.session_state["training_seen_live"] = any(j.live for j in jobs)


training_progress()

# --- upload ---------------------------------------------------------------------------------------------
st.subheader("Upload modes")
files = st.file_uploader("Mode files (.safetensors, as written by `python -m llpf_core train`)",
                         type=["safetensors"], accept_multiple_files=True, key="upload")
for f in files or []:
    done = st.session_state.setdefault("uploaded", set())
    if (f.name, f.size) in done:
        continue
    try:
        mode = uploads.save_upload(f.getvalue(), f.name, state.modes_dir())
    except UserError as e:
        state.show_error(e)
    except Exception:  # one file that breaks the reader must not stop the others, nor show a traceback
        log.exception("reading the uploaded file %r failed", f.name)
        state.show_error(UserError(f"{f.name} could not be read as a mode file; the server's log has the details"))
    else:
        done.add((f.name, f.size))
        st.success(state.plain(f"added {mode.path.name}: {mode.meta.model} on {mode.meta.dataset}, "
                               f"seed {mode.meta.seed}"))

# --- import ---------------------------------------------------------------------------------------------
st.subheader("Import a state dict")
st.caption("A model trained elsewhere: `save_file(model.state_dict(), 'x.safetensors')` from any script "
           "(DataParallel's `module.` and torch.compile's `_orig_mod.` prefixes are stripped). "
           "Plugin models (LLPF_PLUGINS) are listed with the zoo's.")
with st.form("import_form"):
    state_file = st.file_uploader("State dict (.safetensors)", type=["safetensors"], key="import_upload")
    state_path = st.text_input("or its path in your workspace", key="import_path")
    c = st.columns(3)
    usual = table["model"].dropna().mode() if len(table) else []  # the workspace's most common model
    default_model = usual.iloc[0] if len(usual) and usual.iloc[0] in list_models() else "mlp"
    imp_model = c[0].selectbox("Model", list_models(), index=list_models().index(default_model),
                               key="import_model")
    imp_dataset = c[1].selectbox("Dataset", list_datasets(), key="import_dataset")
    imp_own = c[2].text_input("or your own data (folder or tensor file)", key="import_own_data")
    imp_name = st.text_input("Mode name", value="imported.safetensors", key="import_name")
    imported = st.form_submit_button("Import")
if imported:
    try:
        if state_file is None and not state_path.strip():
            raise UserError("choose a state dict to upload or enter its path")
        dataset_name = confine.visitor_data(imp_own, state.workspace()) if imp_own.strip() else imp_dataset
        source = state_file.name if state_file else str(state.visitor_path(state_path, "state dict path"))
        mode = uploads.import_upload(state_file.getvalue() if state_file else None, source, imp_model,
                                     dataset_name, imp_name, state.modes_dir())
    except UserError as e:
        state.show_error(e)
    else:
        m = mode.meta.metrics
        st.success(state.plain(f"imported {mode.path.name}: {imp_model} on {dataset_name}, "
                               f"test acc {m['test_acc']:.3f}"))
        message = chance_warning(mode.meta, mode.path.name)
        if message:
            st.warning(state.plain(message), icon=":material/warning:")

# --- independence ---------------------------------------------------------------------------------------
st.subheader("Independence check")
valid = list(table.loc[table["problem"] == "", "file"]) if len(table) else []
if len(valid) < 2:
    st.caption("Needs two valid modes.")
else:
    c = st.columns(2)
    a = c[0].selectbox("Mode A", valid, key="ind_a")
    b = c[1].selectbox("Mode B", [v for v in valid if v != a], key="ind_b")
    if st.button("Check independence", key="check_independence"):
        try:
            result = independence(state.mode(state.modes_dir() / a), state.mode(state.modes_dir() / b))
        except UserError as e:
            state.show_error(e)
        else:
            (st.success if result.independent else st.warning)(result.verdict)
            st.plotly_chart(charts.independence_figure(result.table, INDEPENDENCE_THRESHOLD), key="ind_chart")
