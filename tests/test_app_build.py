"""AppTest of the Build page: toggles and the layer stack rebuild the model, errors replace the table, links fall back.

Every test opens a new AppTest, i.e. a new browser session with its own config; nothing here trains.
"""

from __future__ import annotations

import dataclasses

import pytest
from conftest import REPO_ROOT, config_params
from streamlit.testing.v1 import AppTest

from drill.presets import BY_NAME
from drill.summary import summarize

PAGE_TIMEOUT = 60  # seconds per script run: the first one imports torch on a busy 2-core machine
QUICK = BY_NAME["quick"].config  # the default model a session starts with


def build_page(query: dict[str, str] | None = None) -> AppTest:
    """A new session (opened with these URL settings, if any) showing the Build page."""
    at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=PAGE_TIMEOUT)
    at.query_params.update(query or {})
    at.run()
    at.switch_page("views/build.py").run()
    assert not at.exception, at.exception
    return at


def shown_params(at: AppTest) -> int:
    """The parameter count the page shows."""
    return int(next(m for m in at.metric if m.label == "Parameters").value.replace(",", ""))


def layer_tables(at: AppTest) -> list:
    """The read-only tables (the layer table), leaving out the row editor."""
    return [table for table in at.dataframe if table.editing_mode == "read_only"]


def share_link(at: AppTest) -> str:
    return next(code.value for code in at.sidebar.code)


def widget(widgets, label: str):
    return next(w for w in widgets if w.label == label)


def test_default_model_shows_its_table_params_and_receptive_field():
    at = build_page()
    summary = summarize(QUICK.model)
    assert shown_params(at) == summary.total_params
    table = layer_tables(at)[0].value
    assert list(table.columns) == ["layer", "type", "output shape", "params", "RF"]
    assert table["params"].sum() == summary.total_params
    assert list(table["layer"]) == [row.name for row in summary.rows]
    assert widget(at.metric, "Receptive field at the head").value == f"{summary.head_rf}x{summary.head_rf}"
    assert any("last feature map" in caption.value for caption in at.caption)
    assert at.get("vega_lite_chart"), "the budget chart is missing"
    assert widget(at.text_input, "Compact stack").value == QUICK.model.layers


def test_batch_norm_toggle_changes_the_parameter_count_and_the_url():
    at = build_page()
    before = shown_params(at)
    widget(at.segmented_control, "Batch norm").set_value("off").run()
    expected = summarize(dataclasses.replace(QUICK.model, batch_norm="off")).total_params
    assert shown_params(at) == expected < before
    assert "bn" not in at.query_params  # "off" is the default, so the link drops it
    assert not any("BatchNorm2d" in t for t in layer_tables(at)[0].value["type"])
    widget(at.segmented_control, "Batch norm").set_value("after_relu").run()
    assert shown_params(at) == before
    assert at.query_params["bn"] == "after_relu"


def test_a_toggle_flipped_just_before_opening_another_page_is_kept():
    # Under load a student can flip a toggle and click another page before the Build page has rerun: the change
    # must land anyway (it did not: the page only read its widgets when it ran, and the other page ran instead).
    at = build_page()
    at.toggle(key="bias_0").set_value(True)
    at.switch_page("views/train.py").run()
    assert not at.exception
    assert config_params(at)["bias"] == "1"
    at.switch_page("views/build.py").run()
    assert at.toggle(key="bias_0").value is True
    assert shown_params(at) == summarize(QUICK.replace(model={"bias": True}).model).total_params


def test_an_invalid_stack_shows_the_error_beside_the_last_valid_model():
    at = build_page()
    widget(at.text_input, "Compact stack").set_value("8,M,M,M,M,M").run()
    assert not at.exception
    (message,) = [e.value for e in at.error]
    assert message.startswith("**Layer stack** = '8,M,M,M,M,M' can't be used: after layer 6 (2x2 max-pool)")
    assert message.endswith("The last valid model, shown below, stays current.")
    # The parameters and the layer table stay, for the model still current.
    assert shown_params(at) == summarize(QUICK.model).total_params
    assert list(layer_tables(at)[0].value["layer"]) == [row.name for row in summarize(QUICK.model).rows]
    assert at.query_params["layers"] == QUICK.model.layers
    assert list(at.data_editor[0].value["kind"]) == ["conv 3x3"] + ["max-pool 2x2"] * 5  # the rows show the text
    # The rows can't show a stack that does not parse: they keep the last one, locked, and say so.
    widget(at.text_input, "Compact stack").set_value("8,M,x").run()
    assert at.data_editor[0].proto.disabled and len(at.data_editor[0].value) == 6
    assert any("The rows show the last stack that could be built" in c.value for c in at.caption)
    # Fixing the text makes the new stack current.
    widget(at.text_input, "Compact stack").set_value("8, 16p, M, T8, 16").run()
    assert not at.error
    assert at.query_params["layers"] == "8,16p,M,T8,16"
    assert "layers=8%2C16p%2CM%2CT8%2C16" in share_link(at), "the sidebar's link lagged one edit behind"
    assert shown_params(at) == summarize(dataclasses.replace(QUICK.model, layers="8,16p,M,T8,16")).total_params
    assert len(at.data_editor[0].value) == 5  # the row editor restarted from the typed stack


def test_the_row_editor_edits_the_stack():
    at = build_page()
    editor = at.data_editor[0]
    assert list(editor.value["kind"]) == ["conv 3x3"] * 3 + ["max-pool 2x2", "transition 1x1"] + ["conv 3x3"] * 3
    at.session_state[editor.key] = {"edited_rows": {1: {"channels": 12}}, "added_rows": [], "deleted_rows": [7]}
    at.run()
    assert not at.exception and not at.error
    assert widget(at.text_input, "Compact stack").value == "10,12,16,M,T10,10,16"
    assert at.query_params["layers"] == "10,12,16,M,T10,10,16"
    assert "layers=10%2C12%2C16%2CM%2CT10%2C10%2C16" in share_link(at)
    assert shown_params(at) == summarize(dataclasses.replace(QUICK.model, layers="10,12,16,M,T10,10,16")).total_params
    # A row without channels is named in the error; the last valid stack stays current.
    at.session_state[editor.key] = {
        "edited_rows": {},
        "added_rows": [{"kind": "conv 3x3", "padding": False}],
        "deleted_rows": [],
    }
    at.run()
    assert any("row 9" in e.value and "channels" in e.value for e in at.error), at.error
    assert at.query_params["layers"] == "10,12,16,M,T10,10,16"
    # Leaving the page drops the editor's edits; coming back shows the stack that is current.
    at.session_state[editor.key] = {"edited_rows": {}, "added_rows": [], "deleted_rows": [7]}
    at.run()
    at.switch_page("views/train.py").run()
    at.switch_page("views/build.py").run()
    assert not at.error
    assert widget(at.text_input, "Compact stack").value == "10,10,16,M,T10,10,16"
    assert len(at.data_editor[0].value) == 7
    assert at.query_params["layers"] == "10,10,16,M,T10,10,16"


def test_a_malformed_link_falls_back_to_the_default_model_with_a_warning():
    at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=PAGE_TIMEOUT)
    at.query_params["ep"] = "abc"
    at.run()
    assert any("could not be loaded" in w.value and "**Epochs** = 'abc'" in w.value for w in at.warning), at.warning
    at.switch_page("views/build.py").run()
    assert not at.exception
    assert shown_params(at) == summarize(QUICK.model).total_params
    assert config_params(at) == QUICK.to_query_params()


@pytest.mark.parametrize(
    "key, values, needle",
    [
        # A setting given twice was taken (its last value) here, and refused by `RunConfig.from_query`.
        ("ep", ["3", "4"], "each setting at most once ('ep' is given twice)"),
        # Fullwidth and Arabic-Indic digits were taken and then shown as boxes in the compact stack.
        ("layers", ["８,16"], "layer 1 ('８') has characters other than plain letters and the digits 0-9"),
        ("ep", ["٣"], "**Epochs** = '٣' can't be used: a whole number from 1 to 20, written with the digits 0-9."),
    ],
)
def test_a_link_with_a_setting_twice_or_foreign_digits_is_refused_with_a_message(key, values, needle):
    at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=PAGE_TIMEOUT)
    at.query_params[key] = values
    at.run()
    assert not at.exception
    assert any("could not be loaded" in w.value and needle in w.value for w in at.warning), at.warning
    assert config_params(at) == QUICK.to_query_params()


def test_a_row_edits_its_own_layer_and_a_toggle_then_sets_every_row():
    at = build_page()
    editor_widget = at.data_editor[0]
    assert set(editor_widget.value["batch norm"].dropna()) == {"before ReLU"}  # the toggle, filled into every conv
    at.session_state[editor_widget.key] = {
        "edited_rows": {1: {"batch norm": "after ReLU", "BN learnable": False}, 3: {"dropout": 0.1}},
        "added_rows": [],
        "deleted_rows": [],
    }
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    stack = "10,10:bn=after:affine=0,16,M:drop=0.1,T10,10,16,16"
    assert widget(at.text_input, "Compact stack").value == stack and at.query_params["layers"] == stack
    # Batch norm flipped on the page: every row follows it; the pool's dropout, not a batch norm setting, stays.
    widget(at.segmented_control, "Batch norm").set_value("off").run()
    assert not at.exception and not at.error
    assert at.query_params["layers"] == "10,10:affine=0,16,M:drop=0.1,T10,10,16,16"
    assert set(at.data_editor[0].value["batch norm"].dropna()) == {"off"}
    expected = summarize(dataclasses.replace(QUICK.model, batch_norm="off", layers=at.query_params["layers"]))
    assert shown_params(at) == expected.total_params
