"""Build: toggle the model's pieces and watch the layer table, parameter count and receptive field change."""

import pandas as pd
import streamlit as st

from drill import ui_logic as ui
from drill.charts import budget_chart
from drill.config import ModelConfig, field_help
from drill.summary import summarize
from views import common


def stack_draft() -> ui.StackDraft:
    """This session's stack draft, started afresh from the config whenever the config is replaced from outside."""
    draft = st.session_state.get("stack")
    if draft is None or draft.version != common.version():
        layers = common.config().model.layers
        draft = st.session_state.stack = ui.StackDraft(common.version(), base=layers, text=layers)
    return draft


def typed(text_key: str) -> None:
    """The compact text's on_change: the draft takes what was typed."""
    st.session_state.stack.typed(st.session_state[text_key])


# -- inputs (title first, so the layer table can sit beside the controls) ----------------------------------------
cfg, v = common.config(), common.version()
draft = stack_draft()
editor_key, text_key = f"stack_rows_{v}_{draft.editor}", f"stack_text_{v}"
if editor_key not in st.session_state:  # a fresh editor (or one dropped while on another page) starts from the text
    draft.rebase()

st.title("🧱 Build")
st.caption("Every change rebuilds the model at once: watch the parameters and the receptive field move.")
controls, results = st.columns([2, 3], gap="large")
with controls:
    m = cfg.model
    bn = common.field_choice(ModelConfig, "batch_norm", m.batch_norm, key="bn")
    dropout = common.field_slider(ModelConfig, "dropout", m.dropout, 0.01, key="drop")
    kind = common.field_choice(ModelConfig, "dropout_kind", m.dropout_kind, key="dk", disabled=dropout == 0)
    head = common.field_choice(ModelConfig, "head", m.head, key="head", dropdown=True)
    bias = common.field_toggle(ModelConfig, "bias", m.bias, key="bias")
    lsm = common.field_toggle(ModelConfig, "log_softmax", m.log_softmax, key="lsm")
    st.markdown("**Layer stack** (top = first layer; add or delete rows at the bottom)")
    edited = st.data_editor(
        pd.DataFrame(ui.stack_rows(draft.base), columns=["kind", "channels", "padding"]),
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
    row_error = draft.take_rows(st.session_state.get(editor_key), edited.to_dict("records"))
    st.session_state[text_key] = draft.text
    st.text_input(
        "Compact stack", key=text_key, on_change=typed, args=(text_key,), help=field_help(ModelConfig, "layers")
    )

# -- state set-up: the new config, if valid, becomes current (and goes into the URL) --------------------------------
kind = kind if dropout > 0 else m.dropout_kind  # without dropout the kind is moot, and its control is disabled
model = dict(
    layers=draft.text, batch_norm=bn, dropout=dropout, dropout_kind=kind, head=head, bias=bias, log_softmax=lsm
)
config_error = row_error or common.apply_config(model=model)[1]

# -- draw ---------------------------------------------------------------------------------------------------------
with results:
    if config_error:
        common.config_error(config_error, {"model": model}, "The last valid model, shown below, stays current.")
    # An invalid edit leaves the last valid model current, and it stays in view beside the error.
    summary = summarize(common.config().model)
    total = summary.total_params
    params_col, rf_col = st.columns(2)
    params_col.metric("Parameters", f"{total:,}", delta=ui.budget_delta(total), delta_color="inverse")
    rf_col.metric("Receptive field at the head", f"{summary.head_rf}x{summary.head_rf}")
    st.altair_chart(budget_chart(total), width="stretch")
    st.caption(ui.rf_note(summary.head_rf))
    table = pd.DataFrame(ui.layer_table(summary))
    st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        height=ui.table_height(len(table)),
        column_config={"params": st.column_config.NumberColumn(format="localized")},
    )
    st.caption(ui.cost_note(summary))
