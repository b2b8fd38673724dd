"""Search: choose two modes, an algorithm and a preset, edit the layer order and settings, and start."""
import re
from dataclasses import replace

import confine
import layer_order
import pandas as pd
import state
import streamlit as st
from runner import unique_run_name

from llpf_core import (
    ALGORITHMS,
    GENERIC_M2M,
    ORIGIN,
    PATH_METHODS,
    ContinuitySpec,
    TrainSpec,
    UserError,
    check_compatible,
    default_preset,
    generic_m2m,
    list_presets,
    load_preset,
    validate,
)

EDITOR = "layer_table"  # session keys of the layer-order editor
EDITOR_SOURCE = "layer_table_source"
EDITOR_VERSION = "layer_table_version"

st.title("Search")
modes = {}
for path in state.mode_files():
    try:
        modes[path.name] = state.mode(path)
    except UserError:
        pass  # the Modes page lists invalid files with the reason
if not modes:
    st.info("No valid modes in the workspace yet. Train or upload some on the Modes page, or run the demo "
            "from Home.")
    st.stop()

# --- what to connect ---------------------------------------------------------------------------------
algorithm = st.radio("Algorithm", ALGORITHMS, horizontal=True, key="algorithm",
                     help="m2m: mode to mode · m2o: shrink toward the origin (or onto the end's sphere) · "
                          "to_vs: onto the end's variance sphere · cross_sphere: to_vs, then m2m · the comparison "
                          "methods: linear (the straight line), bezier (a trained curve), rebasin (weight "
                          "matching, then the straight line)")
left, right = st.columns(2)  # start and end side by side; the preset and device below them
start_name = left.selectbox("Start mode", list(modes), key="start_mode")
start = modes[start_name]


def compatible(name: str) -> bool:
    try:
        check_compatible(start, modes[name], replace(load_preset("mlp-digits-m2m"), algorithm="m2m"))
        return True
    except UserError:
        return False


ends = [n for n in modes if n != start_name and compatible(n)]
if algorithm == "m2o":
    ends = [ORIGIN] + ends
end_name = right.selectbox("End mode", ends, key="end_mode",
                           help="Only modes of the same model and dataset are offered.")
if end_name is None:
    st.warning(f"No mode compatible with {start_name} ({start.meta.model} on {start.meta.dataset}): train "
               f"another seed on the Modes page.")
    st.stop()
end = None if end_name == ORIGIN else modes[end_name]

model, dataset = start.meta.model, start.meta.dataset
presets = [p.name for p in list_presets() if p.model == model]
fallback = default_preset(model, dataset, algorithm)
generic = not presets and algorithm == "m2m"  # a model without presets (a plugin's): all layers, one phase
if not generic and (not presets or fallback is None):
    st.error(f"No {algorithm} preset for model {model}; add one to assets/presets.")
    st.stop()
preset = left.selectbox("Preset", [GENERIC_M2M] if generic else presets,
                        index=presets.index(fallback) if fallback in presets else 0,
                        key=f"preset_{model}_{dataset}_{algorithm}")
device = right.selectbox("Device", ["auto", "cpu", "cuda"], key="device",
                         help="auto: the GPU when there is one, else the CPU")
base = replace(generic_m2m() if generic else load_preset(preset), algorithm=algorithm, device=device)

# The config's names in validate()'s messages, as the fields below label them.
FIELD_LABELS = {"train.max_iters": "max iters", "train.min_iters": "min iters", "min_iters": "min iters",
                "max_iters": "max iters", "train.batch_size": "batch size", "train.lr": "lr",
                "train.loss_threshold": "loss threshold", "train.loss_floor_factor": "loss floor factor",
                "eval_every": "eval every", "eval_samples": "eval samples", "save_every": "save every",
                "checkpoint_every": "checkpoint every", "continuity.points": "continuity points",
                "continuity.samples": "continuity samples", "continuity.every": "continuity every",
                "curve.points": "points along the path", "curve.steps": "SGD steps", "curve.lr": "lr",
                "curve.momentum": "momentum", "curve.batch_size": "batch size"}


def in_field_labels(message: str) -> str:
    """``train.max_iters (20) must be >= min_iters (80)`` as "max iters (20) must be >= min iters (80)"."""
    for key in sorted(FIELD_LABELS, key=len, reverse=True):
        message = re.sub(rf"(?<![\w.]){re.escape(key)}\b", f"“{FIELD_LABELS[key]}”", message)
    return message


# --- the layer order (LLPF) or the curve (the comparison methods) ------------------------------------
def curve_settings(base):
    """The path methods' settings (``curve.*``): points along the path, and bezier's training of its bend."""
    st.subheader("Path")
    st.caption({"linear": "The straight line from the start to the end mode, evaluated at evenly spaced points.",
                "bezier": "A quadratic Bezier curve whose bend is trained by SGD (Garipov et al. 2018), "
                          "evaluated at evenly spaced points.",
                "rebasin": "Git Re-Basin weight matching permutes the end mode's units to match the start, "
                           "then the straight line to the permuted end."}[algorithm])
    c = st.columns(5)
    points = int(c[0].number_input("points along the path", value=base.curve.points, min_value=2,
                                   key="curve_points", help="Evaluated and saved, both ends included"))
    if algorithm != "bezier":
        return replace(base.curve, points=points)
    return replace(base.curve, points=points,
                   steps=int(c[1].number_input("SGD steps", value=base.curve.steps, min_value=0, key="curve_steps")),
                   lr=c[2].number_input("lr", value=base.curve.lr, min_value=1e-6, format="%.4f", key="curve_lr"),
                   momentum=c[3].number_input("momentum", value=base.curve.momentum, min_value=0.0, max_value=0.99,
                                              format="%.2f", key="curve_momentum"),
                   batch_size=int(c[4].number_input("batch size", value=base.curve.batch_size, min_value=1,
                                                    key="curve_batch_size")))


path_method = algorithm in PATH_METHODS
issues = []
if path_method:
    base = replace(base, curve=curve_settings(base))
    phases, ticks = base.phases, base.ticks
else:
    st.subheader("Layer order")
    source = st.radio("Start from", ["the preset's phases", "follow_data_flow (one group per module)"],
                      horizontal=True, index=1 if generic else 0, key="layer_source")
    cumulative = st.toggle("Cumulative: each phase also moves the groups above it",
                           value=source != "the preset's phases",
                           key=f"cumulative_{source.split()[0]}")
    names = list(start.model.state_dict())
    origin = (preset, start_name, source)
    if st.session_state.get(EDITOR_SOURCE) != origin:
        st.session_state[EDITOR] = (layer_order.from_preset(base) if source == "the preset's phases"
                                    else layer_order.from_data_flow(start.model, base))
        st.session_state[EDITOR_SOURCE] = origin
        st.session_state[EDITOR_VERSION] = st.session_state.get(EDITOR_VERSION, 0) + 1

    edited = st.data_editor(
        st.session_state[EDITOR], num_rows="dynamic", key=f"editor_{st.session_state[EDITOR_VERSION]}",
        column_config={"layers": st.column_config.TextColumn("layers (patterns, comma-separated)", width="large"),
                       # No min_value: the editor would silently keep the old value of a 0 or a negative
                       # step; layer_order.problems names it instead.
                       "ticks": st.column_config.NumberColumn(step=1),
                       "step_a": st.column_config.NumberColumn(format="%.5f"),
                       "step_f": st.column_config.NumberColumn(format="%.5f"),
                       "step_c": st.column_config.NumberColumn(format="%.5f")})
    table = pd.DataFrame(edited, columns=layer_order.COLUMNS).reset_index(drop=True)

    rows = st.multiselect("Groups to reorder, merge or split", list(range(len(table))),
                          format_func=lambda i: f"{i + 1}: {table.iloc[i]['layers']}", key="layer_rows")
    ops = st.columns(4)
    changed = None
    if ops[0].button("Move up", key="move_up", disabled=not rows):
        changed = layer_order.move(table, rows, -1)
    if ops[1].button("Move down", key="move_down", disabled=not rows):
        changed = layer_order.move(table, rows, +1)
    if ops[2].button("Merge", key="merge", disabled=len(rows) < 2):
        changed = layer_order.merge(table, rows)
    if ops[3].button("Split", key="split", disabled=len(rows) != 1):
        changed = layer_order.split(table, rows[0], names)
    if changed is not None:
        st.session_state[EDITOR] = changed
        st.session_state[EDITOR_VERSION] += 1
        del st.session_state["layer_rows"]
        st.rerun()

    issues = layer_order.problems(table, names)
    for message in issues:
        st.error(message)
    phases, ticks = layer_order.phases(table, cumulative) if not issues else (base.phases, base.ticks)
    if not issues:
        st.caption(f"{len(phases)} phase(s), {ticks} ticks in all; the phases start at ticks "
                   + ", ".join(str(p.start_tick) for p in phases) + ".")

# --- training, evaluation, saving ------------------------------------------------------------------------
with st.expander("Evaluation" if path_method else "Training, evaluation, saving and checks", expanded=False):
    if path_method:  # the comparison methods train nothing per tick and save every point
        c = st.columns(2)
        train, continuity = base.train, base.continuity
        eval_samples = int(c[0].number_input("eval samples (0 = all)", value=base.eval_samples, min_value=0,
                                             key=f"eval_samples_{preset}"))
        seed = int(c[1].number_input("seed", value=base.seed, min_value=0, key=f"seed_{preset}"))
        eval_every, save_every, checkpoint_every = base.eval_every, base.save_every, base.checkpoint_every
    else:
        c = st.columns(6)
        train = TrainSpec(lr=c[0].number_input("lr", value=base.train.lr, min_value=0.0, format="%.5f",
                                               key=f"lr_{preset}"),
                          batch_size=int(c[1].number_input("batch size", value=base.train.batch_size, min_value=1,
                                                           key=f"batch_size_{preset}")),
                          loss_threshold=c[2].number_input("loss threshold", value=base.train.loss_threshold,
                                                           min_value=0.0, format="%.4f",
                                                           key=f"loss_threshold_{preset}"),
                          min_iters=int(c[3].number_input("min iters", value=base.train.min_iters, min_value=1,
                                                          key=f"min_iters_{preset}")),
                          max_iters=int(c[4].number_input("max iters", value=base.train.max_iters, min_value=1,
                                                          key=f"max_iters_{preset}")),
                          loss_floor_factor=c[5].number_input(
                              "loss floor × endpoints", value=base.train.loss_floor_factor, min_value=0.0,
                              format="%.2f", key=f"loss_floor_{preset}",
                              help="The threshold used is at least this times the larger of the two modes' own "
                                   "train losses (0: the loss threshold as given)."))
        c = st.columns(5)
        eval_every = int(c[0].number_input("eval every", value=base.eval_every, min_value=1,
                                           key=f"eval_every_{preset}"))
        eval_samples = int(c[1].number_input("eval samples (0 = all)", value=base.eval_samples, min_value=0,
                                             key=f"eval_samples_{preset}"))
        save_every = int(c[2].number_input("save every", value=base.save_every, min_value=1,
                                           key=f"save_every_{preset}"))
        checkpoint_every = int(c[3].number_input("checkpoint every", value=base.checkpoint_every, min_value=1,
                                                 key=f"checkpoint_every_{preset}"))
        seed = int(c[4].number_input("seed", value=base.seed, min_value=0, key=f"seed_{preset}"))
        c = st.columns(3)
        continuity = ContinuitySpec(
            points=int(c[0].number_input("continuity points", value=base.continuity.points, min_value=0,
                                         key=f"cont_points_{preset}")),
            samples=int(c[1].number_input("continuity samples", value=base.continuity.samples, min_value=1,
                                          key=f"cont_samples_{preset}")),
            every=int(c[2].number_input("continuity every", value=base.continuity.every, min_value=1,
                                        key=f"cont_every_{preset}")))

cfg = replace(base, phases=phases, ticks=ticks, train=train, eval_every=eval_every, eval_samples=eval_samples,
              save_every=save_every, checkpoint_every=checkpoint_every, seed=seed, continuity=continuity)
problem = None
try:
    validate(cfg)
    check_compatible(start, end, cfg)
except UserError as e:
    problem = in_field_labels(str(e))
    st.error(problem)

# --- start ---------------------------------------------------------------------------------------------
if not st.session_state.get("run_name"):
    st.session_state["run_name"] = unique_run_name(state.runs_dir(), f"{model}-{algorithm}")
name = st.text_input("Run name", key="run_name", help="The folder under runs/ that the search writes")
if st.button("Start search", type="primary", key="start_search", disabled=bool(issues or problem)):
    try:
        confine.plain_name(name)
        job = state.registry().start_search(name, start.path, end.path if end else ORIGIN, cfg,
                                            state.runs_dir() / name)
    except UserError as e:
        state.show_error(e)
    else:
        state.open_run(job.name)
