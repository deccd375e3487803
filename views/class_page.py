"""Class: every run of the class live, as a leaderboard and a scatter, where the students are in the lesson, and a
classmate's config loaded into one's own builder; the teacher's powers behind the teacher key."""

import logging

import pandas as pd
import streamlit as st

from drill import classroom
from drill.charts import class_chart
from drill.liveness import poll_seconds
from drill.presets import matching_preset
from drill.run_record import ACTIVE
from views import common

log = logging.getLogger(__name__)
TEACHER_REASON = "stopped by the teacher"


def check_key() -> None:
    """The Teacher key box's callback: the key is compared once and only the outcome kept, in this session."""
    given = st.session_state.pop("teacher_key_box", "")
    if classroom.key_matches(given, common.teacher_key()):
        st.session_state.teacher = True
    else:
        st.session_state.class_msg = ("error", "That **Teacher key** is not this server's: nothing was unlocked.")


def pick_class() -> None:
    """Outside a class: join one by its code."""
    st.info("You are in no class. Open the link your teacher gave you (it ends in `?class=...`), or type its code.")
    typed = st.text_input("Class code", placeholder="ml-101", key="class_code_box")
    if typed:
        try:
            common.set_class(classroom.check_code(typed))
        except classroom.ClassError as error:
            st.error(str(error))
        else:
            st.rerun()


def pick_name(manager, code: str) -> None:
    """The student's display name in the class: picked once, changeable; runs count for the class from then on."""
    me = classroom.member(manager.store, code, common.owner())
    with st.form("class_name", border=False, enter_to_submit=True):
        typed = st.text_input(
            "Display name",
            value=me.name if me else "",
            help="What your classmates see beside your runs; your runs count for the class from when you join.",
        )
        submitted = st.form_submit_button("Change my name" if me else "Join the class")
    if submitted:
        try:
            name = classroom.join(manager.store, code, common.owner(), typed)
        except classroom.ClassError as error:
            st.error(str(error))
            return
        st.session_state.class_msg = ("success", f"You are in class {code} as `{name}`.")
        st.rerun()
    if me:
        st.caption(f"You are in class {code} as `{me.name}`.")
    else:
        st.warning("Pick a display name to join: until then your runs are not the class's.")


def load_into_builder(row: dict) -> None:
    """A classmate's config becomes this student's current model (every widget reset to it)."""
    cfg = row["config"]
    if not common.set_config(cfg, from_widgets=False):  # the lesson can't take it: the page says why
        return
    if name := matching_preset(cfg):
        st.session_state.preset_name = name
    st.session_state.class_msg = ("success", f"Loaded {row['Run']} of `{row['Student']}` into your builder.")


def teacher_tools(manager, code: str, rows: list[dict], chosen: dict | None) -> None:
    """Stop or pin the chosen run, export the class's table, clear the class: shown only with the teacher key."""
    if chosen is not None:
        left, right = st.columns(2)
        snapshot = manager.snapshot(chosen["ticket_id"])
        if left.button("Stop this run", disabled=snapshot is None or snapshot.status not in ACTIVE, icon="⏹"):
            manager.stop(chosen["ticket_id"], reason=TEACHER_REASON)
            st.session_state.class_msg = ("success", f"Stopped {chosen['Run']} of `{chosen['Student']}`.")
            st.rerun()
        pinned = chosen["ticket_id"] in manager.store.pins(code)
        if right.button("Unpin" if pinned else "Pin on everyone's Compare page", icon="📌"):
            manager.store.pin(code, chosen["ticket_id"], pinned=not pinned)
            st.rerun()
    exports = (
        ("Markdown", classroom.markdown(rows), "md", "text/markdown", "📝"),
        ("CSV", classroom.csv_text(rows), "csv", "text/csv", "📊"),
    )
    for column, (kind, text, suffix, mime, icon) in zip(st.columns(2), exports, strict=True):
        column.download_button(
            f"Download the class's table ({kind})",
            text,
            file_name=f"class-{code}.{suffix}",
            mime=mime,
            on_click="ignore",
            icon=icon,
        )


def clear_class(manager, code: str) -> None:
    with st.expander("Clear the class"):
        st.caption("Forgets the class's names and pins; every student keeps their own runs.")
        sure = st.checkbox(f"Yes, clear class {code}", key="class_clear_sure")
        if st.button("Clear the class", disabled=not sure, icon="🧹"):
            manager.store.clear_class(code)
            st.session_state.class_msg = ("success", f"Class {code} was cleared.")
            st.rerun()


def draw_live(manager, code: str) -> None:
    """The class's runs as they are now; redrawn on a timer while the page is open."""
    rows = classroom.leaderboard(found := classroom.entries(manager, code))
    going = sum(row["Status"].startswith(ACTIVE) for row in rows)
    st.caption(f"{len(rows)} run(s) in class {code}, {going} going; updated every few seconds.")
    if not rows:
        st.info("No runs in this class yet: a run started after joining shows here as it trains.")
    else:
        table = pd.DataFrame(rows, columns=classroom.COLUMNS)
        st.dataframe(
            table,
            hide_index=True,
            column_config={
                "Params": st.column_config.NumberColumn(format="localized"),
                "Best test": st.column_config.NumberColumn(format="%.2f%%"),
                "Status": st.column_config.TextColumn(width="large"),
            },
        )
        st.altair_chart(class_chart(rows), width="stretch")
    counts = classroom.steps(manager.store, code, found)
    st.subheader("Where the class is")
    st.dataframe(
        pd.DataFrame({"Step": list(counts), "Students": list(counts.values())}), hide_index=True, width="content"
    )
    if not rows:
        return
    by_id = {row["ticket_id"]: row for row in rows}
    chosen_id = st.selectbox(
        "A run of the class",
        list(by_id),
        format_func=lambda i: f"{by_id[i]['Student']}: {by_id[i]['Run']} ({by_id[i]['Status']})",
        key="class_run",
    )
    chosen = by_id.get(chosen_id)
    if st.button("Load into my builder", icon="🧱", disabled=chosen is None):
        load_into_builder(chosen)
        st.rerun()
    if common.is_teacher():
        teacher_tools(manager, code, rows, chosen)


def draw_teacher_login() -> None:
    if common.is_teacher():
        st.success("Teacher: you can stop and pin any run of the class, export its table and clear it.")
        return
    with st.expander("Teacher"):
        if common.teacher_key() is None:
            st.caption(
                f"No teacher key is set on this server: set ${classroom.TEACHER_KEY_ENV} (or teacher_key in "
                "Streamlit's secrets) and restart it."
            )
            return
        st.text_input("Teacher key", type="password", key="teacher_key_box", on_change=check_key)


st.title("Class")
try:
    manager = common.manager()
    code = common.class_code()
    if code is None:
        pick_class()
    else:
        st.caption(
            "Every run of the class as it trains. Load a classmate's config into your own builder to try it; only "
            "the teacher can stop a run."
        )
        st.code(f"{(st.context.url or '').split('?')[0]}?{classroom.CLASS_PARAM}={code}", language=None)
        kind, message = st.session_state.pop("class_msg", (None, None))
        if kind:
            (st.success if kind == "success" else st.error)(message)
        pick_name(manager, code)
        draw_teacher_login()
        st.fragment(draw_live, run_every=poll_seconds(manager.online_count()))(manager, code)
        if common.is_teacher():
            clear_class(manager, code)
except Exception as error:  # the page must explain, never show a traceback
    log.exception("class page failed")
    st.error(f"Something went wrong showing the class ({type(error).__name__}: {error}). Reload the page to retry.")
