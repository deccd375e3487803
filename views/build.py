"""Build: toggle the model's pieces and watch the layer table, parameter count and receptive field change."""

import pandas as pd
import streamlit as st

from drill import ui_logic as ui
from drill.analysis import PARAM_BUDGET
from drill.charts import budget_chart
from drill.config import ConfigError, ModelConfig, field_choices, field_help
from drill.summary import summarize
from views import common


def stack_state() -> dict:
    """The stack being edited: `text`, its latest spelling (maybe invalid); `base`, what the row editor started from."""
    state = st.session_state.get("stack")
    if state is None or state["version"] != common.version():
        layers = common.config().model.layers
        state = st.session_state.stack = {"version": common.version(), "base": layers, "text": layers, "editor": 0}
    return state


def typed(text_key: str) -> None:
    """The compact text changed: it becomes the stack, and the row editor restarts from it."""
    state = st.session_state.stack
    typed_text = st.session_state[text_key]
    state["text"] = ui.canonical_stack(typed_text) or typed_text  # "8, 16p" and "8,16p" are one model, one link
    state["base"] = ui.canonical_stack(typed_text) or state["base"]
    state["editor"] += 1


def has_edits(editor_state) -> bool:
    """Whether the row editor holds any edit since it was created."""
    return bool(editor_state) and any(editor_state.get(part) for part in ("edited_rows", "added_rows", "deleted_rows"))


# -- inputs (title first, so the layer table can sit beside the controls) ----------------------------------------
cfg, v = common.config(), common.version()
state = stack_state()
editor_key, text_key = f"stack_rows_{v}_{state['editor']}", f"stack_text_{v}"
if editor_key not in st.session_state:  # a fresh editor (or one dropped while on another page) starts from the text
    state["base"] = ui.canonical_stack(state["text"]) or state["base"]

st.title("🧱 Build")
st.caption("Every change rebuilds the model at once: watch the parameters and the receptive field move.")
controls, results = st.columns([2, 3], gap="large")
with controls:
    bn = st.segmented_control(
        "Batch norm",
        field_choices(ModelConfig, "batch_norm"),
        default=cfg.model.batch_norm,
        format_func=ui.BN_LABELS.get,
        required=True,
        key=f"bn_{v}",
        help=field_help(ModelConfig, "batch_norm"),
    )
    dropout = st.slider(
        "Dropout rate",
        0.0,
        0.5,
        float(cfg.model.dropout),
        0.01,
        key=f"drop_{v}",
        help=field_help(ModelConfig, "dropout"),
    )
    dropout_kind = st.segmented_control(
        "Dropout kind",
        field_choices(ModelConfig, "dropout_kind"),
        default=cfg.model.dropout_kind,
        format_func=ui.DROPOUT_KIND_LABELS.get,
        required=True,
        disabled=dropout == 0,
        key=f"dk_{v}",
        help=field_help(ModelConfig, "dropout_kind"),
    )
    heads = field_choices(ModelConfig, "head")
    head = st.selectbox(
        "Head",
        heads,
        index=heads.index(cfg.model.head),
        format_func=ui.HEAD_LABELS.get,
        key=f"head_{v}",
        help=field_help(ModelConfig, "head"),
    )
    bias = st.toggle("Bias in convolutions", cfg.model.bias, key=f"bias_{v}", help=field_help(ModelConfig, "bias"))
    log_softmax = st.toggle(
        "Log-softmax output (NLL loss)",
        cfg.model.log_softmax,
        key=f"lsm_{v}",
        help=field_help(ModelConfig, "log_softmax"),
    )
    st.markdown("**Layer stack** (top = first layer; add or delete rows at the bottom)")
    edited = st.data_editor(
        pd.DataFrame(ui.stack_rows(state["base"]), columns=["kind", "channels", "padding"]),
        key=editor_key,
        num_rows="dynamic",
        hide_index=True,
        width="stretch",
        column_config={
            "kind": st.column_config.SelectboxColumn("kind", options=ui.LAYER_KINDS, default=ui.CONV, required=True),
            "channels": st.column_config.NumberColumn(
                "channels",
                min_value=1,
                max_value=128,
                step=1,
                default=8,
                help="output channels of a conv or transition",
            ),
            "padding": st.column_config.CheckboxColumn("padding", default=False, help="pad a 3x3 conv by 1"),
        },
    )
    row_error = None
    if has_edits(st.session_state.get(editor_key)):
        try:
            state["text"] = ui.rows_to_stack(edited.to_dict("records"))
        except ConfigError as error:
            row_error = error
    st.session_state[text_key] = state["text"]
    st.text_input(
        "Compact stack", key=text_key, on_change=typed, args=(text_key,), help=field_help(ModelConfig, "layers")
    )

# -- state set-up: the new config, if valid, becomes current (and goes into the URL) --------------------------------
dropout_kind = dropout_kind if dropout > 0 else cfg.model.dropout_kind
try:
    if row_error:
        raise row_error
    new = cfg.replace(
        model={
            "layers": state["text"],
            "batch_norm": bn,
            "dropout": dropout,
            "head": head,
            "dropout_kind": dropout_kind,
            "bias": bias,
            "log_softmax": log_softmax,
        }
    )
except ConfigError as error:
    new, config_error = None, error
else:
    if new != cfg:
        common.set_config(new)

# -- draw ---------------------------------------------------------------------------------------------------------
with results:
    if new is None:
        st.error(f"This model can't be built: {config_error}. The last valid model stays current.")
    else:
        summary = summarize(new.model)
        total = summary.total_params
        params_col, rf_col = st.columns(2)
        params_col.metric(
            "Parameters",
            f"{total:,}",
            delta=f"{total - PARAM_BUDGET:+,} vs the {PARAM_BUDGET:,} budget",
            delta_color="inverse",
        )
        rf_col.metric("Receptive field at the head", f"{summary.head_rf}x{summary.head_rf}")
        st.altair_chart(budget_chart(total), width="stretch")
        st.caption(ui.rf_note(summary.head_rf))
        table = pd.DataFrame(ui.layer_table(summary))
        st.dataframe(
            table,
            hide_index=True,
            width="stretch",
            height=min(36 * (len(table) + 1) + 2, 1200),
            column_config={"params": st.column_config.NumberColumn(format="localized")},
        )
        st.caption(
            f"{summary.mult_adds:,} multiply-adds per image · about {summary.memory_mb:.2f} MB per image "
            "(input, activations and parameters)"
        )
