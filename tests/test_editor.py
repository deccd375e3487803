"""The Build page's stack editor without streamlit: rows show each layer's own settings with the model's toggles
filled in, rows go back to the compact text writing only what differs from the toggles, and the draft keeps the
table and the text in step."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from drill import editor
from drill.config import ConfigError, ModelConfig
from drill.gallery import NETWORKS
from drill.presets import PRESETS
from drill.stack import follow_toggles, without

PLAIN = SimpleNamespace(batch_norm="off", dropout=0.0, dropout_kind="element", bias=False)


def test_rows_show_every_setting_of_a_layer_with_the_toggles_filled_in():
    toggles = SimpleNamespace(batch_norm="before_relu", dropout=0.05, dropout_kind="element", bias=False)
    rows = editor.stack_rows("8,16p:bn=after:affine=0,M:drop=0.1:dk=channel,T4:relu=0,12:k=5:bias=1,A", toggles)
    assert [row["kind"] for row in rows] == [editor.CONV, editor.CONV, editor.POOL, editor.TRANSITION, editor.CONV5,
                                             editor.AVG_POOL]  # fmt: skip
    first, second, pool, transition, wide, avg = rows
    assert first == {
        "kind": editor.CONV, "channels": 8, "padding": False, "batch norm": "before ReLU", "BN learnable": True,
        "ReLU": True, "dropout": 0.05, "dropout kind": "element", "bias": False,
    }  # fmt: skip
    assert (second["batch norm"], second["BN learnable"], second["padding"]) == ("after ReLU", False, True)
    assert (pool["dropout"], pool["dropout kind"], pool["channels"], pool["batch norm"]) == (0.1, "channel", None, None)
    assert transition["ReLU"] is False and wide["bias"] is True and avg["dropout"] == 0.0


@pytest.mark.parametrize(
    "spec",
    ["8,16p:bn=after:affine=0,M:drop=0.1:dk=channel,T4:relu=0,12p:k=5:bias=1,A,16:k=7"]
    + [p.config.model.layers for p in PRESETS]
    + [n.config.model.layers for n in NETWORKS],
)
def test_rows_go_back_to_the_same_stack(spec):
    assert editor.rows_to_stack(editor.stack_rows(spec, PLAIN), PLAIN) == editor.canonical_stack(spec)
    # Under other toggles an option equal to its toggle is dropped from the text; the rows stay the same.
    toggles = SimpleNamespace(batch_norm="after_relu", dropout=0.1, dropout_kind="channel", bias=True)
    rows = editor.stack_rows(spec, toggles)
    assert editor.stack_rows(editor.rows_to_stack(rows, toggles), toggles) == rows


def test_a_row_edited_away_from_the_toggles_becomes_a_layer_option_and_back():
    rows = editor.stack_rows("8,16", PLAIN)
    rows[1] |= {"batch norm": "after ReLU", "dropout": 0.2, "bias": True}
    assert editor.rows_to_stack(rows, PLAIN) == "8,16:bias=1:bn=after:drop=0.2"
    rows[1] |= {"batch norm": "off", "dropout": 0.0, "bias": False}  # back to what the toggles say: no options
    assert editor.rows_to_stack(rows, PLAIN) == "8,16"
    # A new row with only its kind and channels follows the toggles; a pool needs no channels.
    assert editor.rows_to_stack([*rows, {"kind": editor.CONV5, "channels": 4}, {"kind": editor.AVG_POOL}], PLAIN) == (
        "8,16,4:k=5,A"
    )


@pytest.mark.parametrize(
    "row, needle",
    [
        ({"kind": None}, "row 2 needs a kind"),
        ({"kind": editor.CONV, "channels": None}, "row 2 needs a whole number of channels from 1 to 1,024"),
        ({"kind": editor.CONV, "channels": 2000}, "from 1 to 1,024"),
        ({"kind": editor.CONV, "channels": 8, "dropout": 0.9}, "row 2 needs a dropout rate from 0 to 0.5"),
    ],
)
def test_a_bad_row_is_named_with_what_is_allowed(row, needle):
    with pytest.raises(ConfigError, match=needle):
        editor.rows_to_stack([{"kind": editor.CONV, "channels": 8}, row], PLAIN)


def test_a_toggle_that_changes_sets_every_row():
    model = ModelConfig(layers="8:bn=after,M:drop=0.1,16:bias=1:drop=0.2")
    # Batch norm flipped: the rows' own batch norm goes, their bias and dropout stay.
    assert follow_toggles(model, {"batch_norm": "before_relu"}) == {
        "batch_norm": "before_relu",
        "layers": "8,M:drop=0.1,16:bias=1:drop=0.2",
    }
    assert follow_toggles(model, {"dropout": 0.05})["layers"] == "8:bn=after,M,16:bias=1"
    # A toggle left as it is changes no row, and the text keeps its spelling.
    assert follow_toggles(model, {"batch_norm": "off", "layers": "8:bn=after, M:drop=0.1"}) == {
        "batch_norm": "off",
        "layers": "8:bn=after, M:drop=0.1",
    }
    assert without("8, 16", "bn") == "8, 16"


def test_typing_a_stack_canonicalises_it_and_restarts_the_row_editor():
    draft = editor.StackDraft(0, base="8,16", text="8,16")
    draft.typed("8, 16p:bn=after  M T8")
    assert (draft.text, draft.base, draft.editor) == ("8,16p:bn=after,M,T8", "8,16p:bn=after,M,T8", 1)
    assert draft.in_step
    # Invalid text is kept for the student to fix; the row editor keeps the last stack that parsed, and says so.
    draft.typed("8,M,x")
    assert (draft.text, draft.base, draft.editor) == ("8,M,x", "8,16p:bn=after,M,T8", 2)
    assert not draft.in_step


def test_rebase_points_a_new_row_editor_at_the_text_only_when_it_parses():
    draft = editor.StackDraft(0, base="8", text="8 , 16")
    draft.rebase()
    assert draft.base == "8,16"
    draft.text = "nonsense"
    draft.rebase()
    assert draft.base == "8,16"


def test_take_rows_uses_the_rows_only_once_the_editor_holds_an_edit():
    rows = editor.stack_rows("8,M,T4,16p", PLAIN)
    draft = editor.StackDraft(0, base="8,16", text="typed, not yet valid")
    for untouched in (None, {}, {"edited_rows": {}, "added_rows": [], "deleted_rows": []}):
        assert draft.take_rows(untouched, rows, PLAIN) is None
        assert draft.text == "typed, not yet valid"
    assert draft.take_rows({"deleted_rows": [4]}, rows, PLAIN) is None
    assert draft.text == "8,M,T4,16p"
    error = draft.take_rows(
        {"added_rows": [{"kind": editor.CONV}]}, [*rows, {"kind": editor.CONV, "channels": None}], PLAIN
    )
    assert isinstance(error, ConfigError) and "row 5" in str(error)
    assert draft.text == "8,M,T4,16p"  # a bad row leaves the last good text
