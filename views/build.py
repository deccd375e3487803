"""Build: toggle the model's pieces and watch the layer table, parameter count and receptive field change."""

from types import SimpleNamespace

import pandas as pd
import streamlit as st

from drill import editor, layer_table
from drill.charts import budget_chart
from drill.config import ConfigError, ModelConfig, field_help
from drill.cost import epoch_note
from drill.stack import MAX_CHANNELS
from drill.summary import summarize
from views import common


def stack_draft() -> editor.StackDraft:
    """This session's stack draft, started afresh from the config whenever the config is replaced from outside."""
    draft = st.session_state.get("stack")
    if draft is None or draft.version != common.version():
        layers = common.config().model.layers
        draft = st.session_state.stack = editor.StackDraft(common.version(), base=layers, text=layers)
    return draft


def typed(text_key: str) -> None:
    """The compact text's on_change: the draft takes what was typed."""
    st.session_state.stack.typed(st.session_state[text_key])


def stack_editor(draft: editor.StackDraft, toggles: SimpleNamespace) -> ConfigError | None:
    """The layer table editor (each row's own settings, the toggles filled in) and the compact text, in step."""
    # The rows show the toggles' values, so a toggle that changes gives the editor a new key: it starts over from
    # the stack, whose rows already hold every edit made so far.
    shown = "_".join(map(str, (toggles.batch_norm, toggles.dropout, toggles.dropout_kind, toggles.bias)))
    editor_key, text_key = f"stack_rows_{v}_{draft.editor}_{shown}", f"stack_text_{v}"
    if editor_key not in st.session_state:  # a fresh editor (or one dropped on another page) starts from the text
        draft.rebase()
    st.markdown("**Layer stack** (top = first layer; add or delete rows at the bottom)")
    if not draft.in_step:
        st.caption("The rows show the last stack that could be built; they follow the text again once it is fixed.")
    column = st.column_config
    # A column the lesson has not reached is hidden (None); its values ride along unseen, and the lesson drops them.
    unseen = {
        name: None
        for name, layer_field in editor.LAYER_FIELD_OF.items()
        if (taught := common.lesson()) is not None and not taught.shows_layer(layer_field)
    }
    edited = st.data_editor(
        pd.DataFrame(editor.stack_rows(draft.base, toggles), columns=editor.COLUMNS),
        key=editor_key,
        num_rows="dynamic",
        hide_index=True,
        width="stretch",
        disabled=not draft.in_step,
        column_config={
            "kind": column.SelectboxColumn("kind", options=editor.LAYER_KINDS, default=editor.CONV, required=True),
            "channels": column.NumberColumn(
                "channels", min_value=1, max_value=MAX_CHANNELS, step=1, default=8, help="output channels of a conv"
            ),
            "padding": column.CheckboxColumn("padding", default=False, help="pad a conv to keep the map's size"),
            "batch norm": column.SelectboxColumn(
                "batch norm",
                options=list(editor.BN_CHOICES.values()),
                help="this conv's batch norm (Batch norm sets every row)",
            ),
            "BN learnable": column.CheckboxColumn(
                "BN learnable", default=True, help="off: batch norm without learnable scale and shift ('functional')"
            ),
            "ReLU": column.CheckboxColumn("ReLU", default=True, help="off for a last conv that makes the 10 outputs"),
            "dropout": column.NumberColumn(
                "dropout",
                min_value=0.0,
                max_value=0.5,
                step=0.01,
                help="after this conv or pool (Dropout rate sets every conv)",
            ),
            "dropout kind": column.SelectboxColumn("dropout kind", options=["element", "channel"]),
            "bias": column.CheckboxColumn("bias", help="this conv's bias (Bias in convolutions sets every row)"),
        }
        | unseen,
    )
    row_error = draft.take_rows(st.session_state.get(editor_key), edited.to_dict("records"), toggles)
    st.session_state[text_key] = draft.text
    st.text_input(
        "Compact stack", key=text_key, on_change=typed, args=(text_key,), help=field_help(ModelConfig, "layers")
    )
    return row_error


# -- inputs (title first, so the layer table can sit beside the controls) ----------------------------------------
cfg, v = common.config(), common.version()
draft = stack_draft()

st.title("🧱 Build")
st.caption("Every change rebuilds the model at once: watch the parameters and the receptive field move.")
common.lesson_note()
controls, results = st.columns([2, 3], gap="large")
with controls:
    m = cfg.model
    # A control the lesson has not reached is not drawn, and its value stays the one the lesson link locked.
    bn, dropout, kind, head = m.batch_norm, m.dropout, m.dropout_kind, m.head
    hidden, hidden_dropout = m.hidden, m.hidden_dropout
    if common.shows("model.batch_norm"):
        bn = common.field_choice(ModelConfig, "batch_norm", m.batch_norm, key="bn")
    if common.shows("model.dropout"):
        dropout = common.field_slider(ModelConfig, "dropout", m.dropout, 0.01, key="drop")
        kind = common.field_choice(ModelConfig, "dropout_kind", m.dropout_kind, key="dk", disabled=dropout == 0)
        kind = kind if dropout > 0 else m.dropout_kind  # without dropout the kind is moot, and its control is off
    if common.shows("model.head"):
        head = common.field_choice(ModelConfig, "head", m.head, key="head", dropdown=True)
    if head in ("fc", "gap_linear"):  # only a linear head has hidden layers; the others keep the values unseen
        left, right = st.columns(2)
        if common.shows("model.hidden"):
            with left:
                hidden = common.field_text(ModelConfig, "hidden", m.hidden, key="hid")
        if common.shows("model.hidden_dropout"):
            with right:
                hidden_dropout = common.field_slider(ModelConfig, "hidden_dropout", m.hidden_dropout, 0.01, key="hdrop")
    bias = common.field_toggle(ModelConfig, "bias", m.bias, key="bias")
    lsm = common.field_toggle(ModelConfig, "log_softmax", m.log_softmax, key="lsm")
    toggles = SimpleNamespace(batch_norm=bn, dropout=dropout, dropout_kind=kind, bias=bias)
    row_error = stack_editor(draft, toggles)

# -- state set-up: the new config, if valid, becomes current (and goes into the URL) --------------------------------
model = dict(
    layers=draft.text,
    batch_norm=bn,
    dropout=dropout,
    dropout_kind=kind,
    head=head,
    hidden=hidden,
    hidden_dropout=hidden_dropout,
    bias=bias,
    log_softmax=lsm,
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
    params_col.metric("Parameters", f"{total:,}", delta=layer_table.budget_delta(total), delta_color="inverse")
    rf_col.metric("Receptive field at the head", f"{summary.head_rf}x{summary.head_rf}")
    st.caption(epoch_note(common.config()))
    st.altair_chart(budget_chart(total), width="stretch")
    st.caption(layer_table.rf_note(summary.head_rf))
    table = pd.DataFrame(layer_table.layer_table(summary))
    st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        height=layer_table.table_height(len(table)),
        column_config={"params": st.column_config.NumberColumn(format="localized")},
    )
    st.caption(layer_table.cost_note(summary))
