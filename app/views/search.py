"""Search: choose two modes, a path method and a preset, edit the layer order (LLPF) or the method's own
settings, and start. The methods and their settings come from the method registry, the config from the
one resolver (``resolve_config``), as in the CLI."""
import json
import re
from dataclasses import fields, replace

import confine
import layer_order
import layerwise_view
import pandas as pd
import state
import streamlit as st
from jobs import unique_run_name

from llpf_core import (
    GENERIC_M2M,
    ORIGIN,
    ContinuitySpec,
    TrainSpec,
    UserError,
    apply_overrides,
    check_compatible,
    default_preset,
    get_method,
    list_methods,
    list_presets,
    method_settings,
    resolve_config,
    validate,
)

EDITOR = "layer_table"  # session keys of the layer-order editor
EDITOR_SOURCE = "layer_table_source"
EDITOR_VERSION = "layer_table_version"
SEEDED = "layer_table_seeded"  # how often the barrier heuristic was asked for: each press seeds the editor again
HEURISTIC = "lowest layer-wise barrier first (heuristic)"

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
methods = list_methods()
algorithm = st.radio("Algorithm", methods, horizontal=True, key="algorithm",
                     help=" · ".join(f"{m}: {get_method(m).description}" for m in methods))
method = get_method(algorithm)
left, right = st.columns(2)  # start and end side by side; the preset and device below them
start_name = left.selectbox("Start mode", list(modes), key="start_mode")
start = modes[start_name]


def compatible(name: str) -> bool:
    try:
        check_compatible(start, modes[name], resolve_config(start.meta.model, start.meta.dataset, "m2m").config)
        return True
    except UserError:
        return False


ends = [n for n in modes if n != start_name and compatible(n)]
if not method.needs_end:
    ends = [ORIGIN] + ends
end_name = right.selectbox("End mode", ends, key="end_mode",
                           help="Only modes of the same model and dataset are offered.")
if end_name is None:
    st.warning(f"No mode compatible with {state.plain(start_name)} ({state.plain(start.meta.model)} on "
               f"{state.plain(start.meta.dataset)}): train "
               f"another seed on the Modes page.")
    st.stop()
end = None if end_name == ORIGIN else modes[end_name]

model, dataset = start.meta.model, start.meta.dataset
presets = [p.name for p in list_presets() if p.model == model]
fallback = default_preset(model, dataset, algorithm)
generic = fallback is None and not method.needs_preset  # a model without presets (a plugin's): the generic M2M
if fallback is None and not generic:
    st.error(f"No {algorithm} preset for model {state.plain(model)}; add one to assets/presets.")
    st.stop()
preset = left.selectbox("Preset", [GENERIC_M2M] if generic else presets,
                        index=presets.index(fallback) if fallback in presets else 0,
                        key=f"preset_{model}_{dataset}_{algorithm}")
device = right.selectbox("Device", ["auto", "cpu", "cuda"], key="device",
                         help="auto: the GPU when there is one, else the CPU")
try:
    resolved = resolve_config(model, dataset, algorithm, preset=preset, to_origin=end is None, device=device)
except UserError as e:
    st.error(state.plain(str(e)))
    st.stop()
base = resolved.config
if resolved.warning:
    st.caption(resolved.warning)

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


# --- the layer order (LLPF) or the method's own settings -----------------------------------------------
def own_settings(base):
    """The method's own settings (its registered dataclass, under its config prefix), one input each."""
    st.subheader("Settings")
    st.caption(method.description)
    current = method_settings(base)
    shown = [f for f in fields(current) if method.reads is None or f.name in method.reads]
    overrides = []
    for column, f in zip(st.columns(max(len(shown), 1)), shown):
        value, key = getattr(current, f.name), f"{method.prefix}_{f.name}"
        if isinstance(value, bool):
            value = column.checkbox(f.name, value=value, key=key)
        elif isinstance(value, int):
            value = int(column.number_input(f.name, value=value, step=1, key=key))
        elif isinstance(value, float):
            value = column.number_input(f.name, value=value, format="%.4g", key=key)
        else:
            value = column.text_input(f.name, value=str(value), key=key)
        overrides.append(f"{method.prefix}.{f.name}={json.dumps(value)}")
    return apply_overrides(base, overrides)


path_method = not method.walks
issues = []
if path_method:
    try:
        base = own_settings(base)
    except UserError as e:
        issues = [str(e)]
        st.error(state.plain(str(e)))
    phases, ticks = base.phases, base.ticks
else:
    st.subheader("Layer order")
    pairwise = None  # the layer-wise connectivity of this pair, once computed
    if end is not None:
        with st.expander("Which layers hold the barrier? Layer-wise connectivity of this pair", expanded=True):
            pairwise = layerwise_view.show(f"pair-{start.path.stem}--{end.path.stem}",
                                           layerwise_view.pair_dir(start.path, end.path), start.path, end.path)
            complete = pairwise is not None and set(pairwise.layers) <= set(pairwise.summary["layer"])
            if complete and st.button("Seed the layer order from the barriers (a heuristic: edit it)", key="lw_seed",
                                      help="Phases that start from the layers with the lowest layer-wise barrier "
                                           "and add the rest phase by phase, each group in data-flow order. A "
                                           "starting point, not a recommendation: the barriers do not predict "
                                           "which order a search finds easiest."):
                st.session_state["layer_source"] = HEURISTIC
                st.session_state[SEEDED] = st.session_state.get(SEEDED, 0) + 1
    sources = ["the preset's phases", "follow_data_flow (one group per module)"]
    if pairwise is not None and set(pairwise.layers) <= set(pairwise.summary["layer"]):
        sources.append(HEURISTIC)
    source = st.radio("Start from", sources, horizontal=True, index=1 if generic else 0, key="layer_source")
    cumulative = st.toggle("Cumulative: each phase also moves the groups above it",
                           value=source != "the preset's phases",
                           key=f"cumulative_{source.split()[0]}")
    names = list(start.model.state_dict())
    origin = (preset, start_name, source, end_name if source == HEURISTIC else None,
              st.session_state.get(SEEDED, 0) if source == HEURISTIC else None)
    if st.session_state.get(EDITOR_SOURCE) != origin:
        st.session_state[EDITOR] = (layer_order.from_preset(base) if source == "the preset's phases"
                                    else layer_order.from_barriers(pairwise, base) if source == HEURISTIC
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
        st.error(state.plain(message))
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
    st.error(state.plain(problem))

# --- start ---------------------------------------------------------------------------------------------
if not st.session_state.get("run_name"):
    st.session_state["run_name"] = unique_run_name(state.runs_dir(), f"{model}-{algorithm}")
name = st.text_input("Run name", key="run_name", help="The folder under runs/ that the search writes")
if st.button("Start search", type="primary", key="start_search", disabled=bool(issues or problem)):
    try:
        confine.plain_name(name)
        job = state.visitor().start_search(name, start.path, end.path if end else ORIGIN, cfg,
                                           state.runs_dir() / name)
    except UserError as e:
        state.show_error(e)
    else:
        state.open_run(job.name)
