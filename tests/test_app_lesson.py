"""AppTest of the Drill-down (landing) page: one card per lesson step, loading a step, and a step's Result/Analysis."""

from __future__ import annotations

from conftest import REPO_ROOT, config_params
from streamlit.testing.v1 import AppTest

from drill.analysis import analyse
from drill.gallery import BY_NAME as GALLERY
from drill.gallery import NETWORKS
from drill.presets import BY_NAME, LESSON, PRESETS
from drill.run_record import RunRecord
from drill.summary import summarize
from views import common

PAGE_TIMEOUT = 60  # seconds per script run on a busy 2-core machine


def landing() -> AppTest:
    """A new session on the default page."""
    at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=PAGE_TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    return at


def test_every_step_has_a_card_with_its_target_change_band_params_and_load_button():
    at = landing()
    assert [h.value for h in at.subheader] == [step.title for step in LESSON] + [n.title for n in NETWORKS]
    markdown = " ".join(m.value for m in at.markdown)
    captions = " ".join(c.value for c in at.caption)
    params = [m.value for m in at.metric if m.label == "Parameters"]
    for step in LESSON:
        assert f"**Target:** {step.target}" in markdown
        assert step.change in markdown
        assert step.seed_band in captions
        assert step.measured and f"Measured in this lab (15 epochs): {step.measured}" in captions
        assert f"{summarize(step.config.model).total_params:,}" in params
        assert at.button(key=f"load_{step.name}").label == "Load into the builder"
    assert "99.4%" in at.markdown[0].value and "8,000" in at.markdown[0].value  # the goal, up front
    assert "Result:" not in markdown  # nothing trained in this session yet


def test_load_puts_the_step_in_the_builder_and_the_url():
    at = landing()
    step = BY_NAME["batchnorm"]
    assert config_params(at) != step.config.to_query_params()
    at.button(key=f"load_{step.name}").click().run()
    assert not at.exception, at.exception
    assert config_params(at) == step.config.to_query_params()
    assert at.session_state["preset_name"] == "batchnorm"
    # (AppTest 1.67 leaves the sidebar out of its tree after a page switch, so the preset picker is checked through
    # the state it is drawn from.)
    # We are on the Build page now, showing the loaded model.
    assert next(s for s in at.segmented_control if s.label == "Batch norm").value == "before_relu"
    shown = next(m for m in at.metric if m.label == "Parameters").value
    assert shown == f"{summarize(step.config.model).total_params:,}"


def test_a_write_ups_network_loads_into_the_builder_with_its_exact_parameters():
    at = landing()
    network = GALLERY["wu003-gap"]
    assert "**The write-up reports:** 25,290 parameters" in " ".join(m.value for m in at.markdown)
    at.button(key=f"load_{network.name}").click().run()
    assert not at.exception, at.exception
    assert config_params(at) == network.config.to_query_params()
    assert next(m for m in at.metric if m.label == "Parameters").value == "25,290"
    # The stack editor shows each layer's own settings: functional batch norm, dropout after the pools only.
    rows = at.data_editor[0].value
    assert list(rows["kind"]) == ["conv 3x3"] * 2 + ["max-pool 2x2"] + ["conv 3x3"] * 2 + ["max-pool 2x2", "conv 3x3"]
    convs = rows[rows["kind"] == "conv 3x3"]
    assert set(convs["batch norm"]) == {"before ReLU"} and not convs["BN learnable"].any()
    assert list(rows["dropout"]) == [0.0, 0.0, 0.1, 0.0, 0.0, 0.1, 0.0]
    table = next(t for t in at.dataframe if t.editing_mode == "read_only").value
    assert table["params"].sum() == network.params


def test_a_trained_step_shows_its_result_and_analysis():
    at = landing()
    step = BY_NAME["lean"]
    # A finished 15-epoch run of this step, as the job manager would hold it (training it here would take minutes).
    epochs = [
        {
            "epoch": e,
            "train_loss": 0.1,
            "train_acc": 97.0 + e / 10,
            "test_loss": 0.1,
            "test_acc": 97.5 + e / 20,
            "lr": 0.01,
            "seconds": 1.0,
        }
        for e in range(1, 16)
    ]
    params = summarize(step.config.model).total_params
    record = {
        "label": step.title,
        "config": step.config.replace(train={"seed": 7}).to_dict(),
        "status": "finished",
        "params": params,
        "epochs": epochs,
    }
    common.manager().add_finished(at.session_state["owner"], RunRecord.from_dict(record))
    at.run()
    results = [m.value for m in at.markdown if m.value.startswith("**Result:**")]
    assert len(results) == 1, results  # only the trained step's card
    assert f"{params:,} parameters" in results[0] and "best test 98.25%" in results[0]
    assert "98.10, 98.15, 98.20, 98.25" in results[0]  # the last four epochs' test accuracy
    verdict = analyse(RunRecord.from_dict(record).epochs, params)
    assert any(verdict.text in box.value for box in [*at.info, *at.success])


def test_the_sidebar_picks_a_preset_and_reset_undoes_an_edit():
    at = landing()
    at.sidebar.selectbox[0].select("batchnorm").run()
    assert not at.exception, at.exception
    assert config_params(at) == BY_NAME["batchnorm"].config.to_query_params()
    assert at.sidebar.selectbox[0].value == "batchnorm"
    # The menu names fit the sidebar ("3. Batch norm"); the whole title is shown under it.
    assert at.sidebar.selectbox[0].options == [preset.menu_name for preset in PRESETS]
    assert "3\\. + Batch norm" in [c.value for c in at.sidebar.caption]  # escaped: not a Markdown list
    reset = next(b for b in at.sidebar.button if b.label == "Reset to preset")
    assert reset.disabled  # nothing edited yet
    # An edit, as the Build page makes it (AppTest drops the sidebar after a page switch, so it is made here).
    at.session_state["config"] = BY_NAME["batchnorm"].config.replace(model={"bias": True})
    at.run()
    reset = next(b for b in at.sidebar.button if b.label == "Reset to preset")
    assert not reset.disabled
    reset.click().run()
    assert not at.exception, at.exception
    assert config_params(at) == BY_NAME["batchnorm"].config.to_query_params()
    assert next(b for b in at.sidebar.button if b.label == "Reset to preset").disabled
