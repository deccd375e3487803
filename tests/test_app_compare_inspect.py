"""AppTest of the Compare and Inspect pages around one tiny real run: the table, the exports, an import, inspection.

AppTest's cache_resource outlives a test, so every test here shares the one process-wide job manager, as the
sessions of a real server do; each AppTest is a new session with its own owner.
"""

from __future__ import annotations

import io
import json

import pytest
from conftest import REPO_ROOT, wait_until
from PIL import Image, ImageDraw
from streamlit.testing.v1 import AppTest

from drill import records
from drill.presets import BY_NAME
from drill.run_record import ACTIVE
from views import common

TINY = BY_NAME["quick"].config.replace(train={"subset": 1000, "epochs": 1, "batch_size": 64})
NAME = "tiny run, seed 1"  # the finished run's name on Compare and Inspect
PAGE_TIMEOUT = 120  # seconds for one script run: Inspect reads all 10,000 test digits on two busy cores


def new_session() -> AppTest:
    """A fresh browser tab: its own session and owner, on the app's default page."""
    at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=PAGE_TIMEOUT)
    at.run()
    assert not at.exception
    return at


def open_page(at: AppTest, page: str) -> AppTest:
    at.switch_page(f"views/{page}.py").run()
    assert not at.exception, at.exception
    return at


def chart_specs(at: AppTest) -> list[str]:
    return [
        json.dumps(chart.proto.spec) if hasattr(chart.proto, "spec") else str(chart.proto)
        for chart in at.get("arrow_vega_lite_chart") + at.get("vega_lite_chart")
    ]


@pytest.fixture(scope="module")
def finished(mnist):
    """A session with one tiny real run trained to the end, submitted under the session's owner."""
    at = new_session()
    manager = common.manager()
    job = manager.submit(at.session_state["owner"], TINY, label="tiny run")
    snapshot = wait_until(
        lambda: (
            manager.touch(at.session_state["owner"]) or ((s := manager.snapshot(job.id)).status not in ACTIVE and s)
        ),
        timeout=300,
        interval=0.1,
        what="the tiny run to finish",
    )
    assert snapshot.status == "finished", snapshot.reason
    return at, snapshot


def test_compare_table_and_markdown_hold_the_run(finished):
    at, run = finished
    open_page(at, "compare")
    assert not at.error
    table = at.dataframe[0].value
    row = table.loc[NAME]  # named as a person would, not by its ticket id
    assert row["Step"] == "tiny run"
    assert row["Params"] == run.params == 7570
    assert row["Best test"] == round(run.epochs[-1].test_acc, 2)
    assert row["Status"] == "finished"
    markdown = at.code[0].value
    assert markdown.startswith("| Step | Target | Params | Best train | Best test | Last 4 | Analysis |")
    assert f"| tiny run | - | 7,570 | {run.epochs[-1].train_acc:.2f}% | {run.epochs[-1].test_acc:.2f}% |" in markdown
    labels = [button.proto.label for button in at.get("download_button")]
    assert labels == ["Download the table (Markdown)", "Download the runs (JSON)"]
    # The curves: the run's whole name in the legend, in a categorical palette (the theme's default is blues).
    (curves,) = [chart.proto for chart in at.get("vega_lite_chart") if '"run"' in chart.proto.spec]
    assert '"tableau10"' in curves.spec and '"labelLimit": 0' in curves.spec
    assert any(NAME.encode() in dataset.data.data for dataset in curves.datasets)


def test_importing_exported_runs_restores_them_in_another_session(finished):
    _, run = finished
    exported = records.records_json([run.record()])
    other = open_page(new_session(), "compare")
    assert any("No runs yet" in info.value for info in other.info)

    bad = json.loads(exported)
    bad[0]["epochs"][0]["test_acc"] = 250
    other.file_uploader(key="compare_import").set_value(("bad.json", json.dumps(bad).encode(), "application/json"))
    other.run()
    assert not other.exception
    assert "Run 1 ('tiny run'), epochs[0].test_acc: 250" in other.error[0].value
    assert not common.manager().snapshots(other.session_state["owner"])

    other.file_uploader(key="compare_import").set_value(("runs.json", exported.encode(), "application/json")).run()
    assert not other.exception and not other.error
    assert "Imported 1 run(s) from runs.json" in other.success[0].value
    [restored] = common.manager().snapshots(other.session_state["owner"])
    assert (restored.label, restored.status, restored.epochs) == ("tiny run", "finished", run.epochs)
    assert other.dataframe[0].value.loc[NAME, "Step"] == "tiny run"
    assert "| tiny run |" in other.code[0].value

    open_page(other, "inspect")  # an imported run has numbers but no model
    assert any("no trained model" in info.value for info in other.info)


def test_the_address_bar_holds_no_id_and_a_link_with_one_gives_none_of_its_runs(finished):
    # The id lives in the browser's cookie (tests/test_browser.py reloads with it); a copied address bar, or an
    # old link's me=, must hand over nothing.
    at, run = finished
    me = at.session_state["owner"]
    assert me not in repr(dict(at.query_params)) and "me" not in at.query_params
    for forged in (me, "../../etc", "x" * 32, "' OR 1=1 --"):
        stranger = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=PAGE_TIMEOUT)
        stranger.query_params.update(dict(at.query_params))
        stranger.query_params["me"] = forged
        open_page(stranger.run(), "compare")
        assert stranger.session_state["owner"] not in (forged, me) and "me" not in stranger.query_params
        assert any("No runs yet" in info.value for info in stranger.info)


def test_the_share_link_carries_the_config_but_not_the_students_id(finished):
    at, _ = finished
    link = next(code.value for code in at.sidebar.code)
    assert at.session_state["owner"] not in link and "me=" not in link
    assert "layers=" in link


def digit_png() -> bytes:
    image = Image.new("L", (120, 160), 255)
    ImageDraw.Draw(image).line([(60, 20), (60, 140)], fill=0, width=14)  # a 1
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_inspect_shows_confusion_matrix_mistakes_and_reads_an_upload(finished):
    at, run = finished
    open_page(at, "inspect")
    assert not at.error
    assert at.selectbox[0].value == run.ticket_id
    specs = chart_specs(at)
    assert any("Confusion matrix (test set)" in spec for spec in specs)
    assert any("Accuracy per digit" in spec for spec in specs)
    assert at.metric[0].value == f"{run.epochs[-1].test_acc:.2f}%"
    labels = [button.proto.label for button in at.get("download_button")]
    assert "Script for the current model" in labels and f"Script for {NAME}" in labels

    at.radio(key="inspect_source").set_value("Photo").run()
    at.file_uploader(key="inspect_upload").set_value(("one.png", digit_png(), "image/png")).run()
    assert not at.exception and not at.error
    assert any(md.value.startswith("The model reads **") for md in at.markdown)
    at.file_uploader(key="inspect_upload").set_value(("fake.png", b"not a picture", "image/png")).run()
    assert not at.exception
    assert "fake.png: The file is not a PNG or JPEG image" in at.error[0].value
