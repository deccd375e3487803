"""Compare: this session's runs as a write-up table, their curves overlaid, and the runs exported or imported."""

import logging

import pandas as pd
import streamlit as st

from drill import classroom, records
from drill.analysis import LAST_K
from drill.charts import compare_chart
from drill.presets import preset_of
from drill.run_record import ACTIVE, ENDED, RecordError
from views import common

log = logging.getLogger(__name__)
METRICS = {
    "Test accuracy": "test_acc",
    "Train accuracy": "train_acc",
    "Test loss": "test_loss",
    "Train loss": "train_loss",
}
IMPORT_KEY = "compare_import"


def import_pending(manager, me: str) -> None:
    """Add the runs of a newly uploaded file to this session (before the table is drawn, so they show at once)."""
    upload = st.session_state.get(IMPORT_KEY)
    if upload is None or st.session_state.get("compare_imported") == upload.file_id:
        return
    st.session_state.compare_imported = upload.file_id
    try:
        loaded = records.parse_records(upload.getvalue())
    except RecordError as error:
        st.session_state.compare_import_msg = ("error", f"Nothing was imported from {upload.name}. {error}")
        return
    fresh, repeated = records.split_new(loaded, [run.record() for run in manager.snapshots(me)])
    for record in fresh:
        manager.add_finished(me, record)
    note = f" ({repeated} already here, skipped)" if repeated else ""
    st.session_state.compare_import_msg = ("success", f"Imported {len(fresh)} run(s) from {upload.name}{note}.")


def draw(manager, me: str) -> None:
    runs = manager.snapshots(me)
    if not runs:
        st.info("No runs yet: start one on the Train page, or import runs exported from another session below.")
        return
    going = [run for run in runs if run.status in ACTIVE]
    if going:
        st.caption(f"{len(going)} run(s) still going: this table shows them as they were when the page loaded.")
        st.button("Refresh", icon="🔄")
    named, rows = zip(*records.write_up(runs), strict=True)
    rows = list(rows)
    table = pd.DataFrame(rows).assign(Run=named).set_index("Run")
    order = ("Step", "Status", "Params", "Best train", "Best test", f"Last {LAST_K}", "Analysis", "Target")
    st.dataframe(
        table,
        column_order=order,
        column_config={
            "Params": st.column_config.NumberColumn(format="localized"),
            "Best train": st.column_config.NumberColumn(format="%.2f%%"),
            "Best test": st.column_config.NumberColumn(format="%.2f%%"),
            "Analysis": st.column_config.TextColumn(width="large"),
        },
    )

    st.subheader("Curves")
    with_epochs = [run for run in runs if run.epochs]
    if with_epochs:
        ids = [run.ticket_id for run in with_epochs]
        names = records.run_names(runs)
        # Keyed by the runs there are: when one is added the picker starts over with the newest runs selected.
        chosen = st.multiselect(
            "Runs to overlay", ids, default=ids[-6:], format_func=names.get, key=f"compare_runs_{len(ids)}_{ids[-1]}"
        )
        metric = st.radio("Metric", list(METRICS), horizontal=True, key="compare_metric")
        picked = [(names[run.ticket_id], list(run.epochs)) for run in with_epochs if run.ticket_id in chosen]
        if picked:
            st.altair_chart(compare_chart(picked, METRICS[metric]), width="stretch")
    else:
        st.caption("No run has finished an epoch yet.")

    st.subheader("Write-up")
    markdown = records.markdown_table(rows)
    st.markdown(markdown)
    with st.expander("Markdown source, to paste into a README"):
        st.code(markdown, language="markdown", wrap_lines=True)
    left, right = st.columns(2)
    left.download_button(
        "Download the table (Markdown)",
        markdown,
        file_name="drill-down-results.md",
        mime="text/markdown",
        icon="📝",
        on_click="ignore",
    )
    ended = any(run.status in ENDED for run in runs)
    right.download_button(
        "Download the runs (JSON)",
        records.records_json([run.record() for run in runs]),
        file_name="drill-down-runs.json",
        mime="application/json",
        icon="💾",
        on_click="ignore",
        disabled=not ended,
        help="Every ended run with its config and epochs, to import in another session.",
    )


def draw_pinned(manager) -> None:
    """The runs the class's teacher pinned, on every class member's Compare page."""
    code = common.class_code()
    pins = classroom.pinned(manager.store, code, classroom.entries(manager, code)) if code else []
    if pins:
        st.subheader("Pinned by your teacher")
        rows = [records.table_row(pin.run, preset_of(pin.run), fallback=pin.run.ticket_id) for pin in pins]
        table = pd.DataFrame(rows).assign(Run=[f"{pin.student}: {pin.name}" for pin in pins]).set_index("Run")
        st.dataframe(table, column_order=("Step", "Status", "Params", "Best test", f"Last {LAST_K}", "Analysis"))


st.title("Compare runs")
st.caption("Every run of this session, written up as Target / Result / Analysis, with its curves side by side.")
try:
    manager, me = common.manager(), common.owner()
    import_pending(manager, me)
    draw(manager, me)
    draw_pinned(manager)
except Exception as error:  # the page must explain, never show a traceback
    log.exception("compare page failed")
    st.error(f"Something went wrong showing your runs ({type(error).__name__}: {error}). Reload the page to retry.")

st.subheader("Import runs")
common.file_upload(
    "A runs file (JSON) exported from this page, in this or another session",
    ["json"],
    IMPORT_KEY,
    records.MAX_IMPORT_BYTES,
)
kind, message = st.session_state.pop("compare_import_msg", (None, None))
if kind == "error":
    st.error(message)
elif kind == "success":
    st.success(message)
