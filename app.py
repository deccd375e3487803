"""Drill-Down Lab: navigation, the shared sidebar (preset picker) and the heartbeat that keeps runs alive."""

import streamlit as st

from drill import gallery, liveness
from drill.lesson import FIRST_STEP, LAST_STEP, Lesson
from drill.presets import BY_NAME, LESSON, PRESETS, matching_preset
from views import common
from views.live import LiveViewWatch

st.set_page_config(page_title="Drill-Down Lab", page_icon="🔬", layout="wide")
common.init_config()
common.keep_owner()

pages = [
    st.Page("views/drilldown.py", title="Drill-down", icon="🪜", default=True),
    st.Page("views/build.py", title="Build", icon="🧱"),
    st.Page("views/train.py", title="Train", icon="📈"),
    st.Page("views/compare.py", title="Compare", icon="⚖️"),
    st.Page("views/inspect.py", title="Inspect", icon="🔍"),
    st.Page("views/class_page.py", title="Class", icon="🏫"),
]
page = st.navigation(pages)


with st.sidebar:
    st.markdown("### Current model")
    taught = common.lesson()
    base = st.session_state.setdefault("preset_name", matching_preset(common.config()) or common.DEFAULT_PRESET)
    # A lesson link offers the steps it has reached (and the presets outside the lesson), not the ones to come.
    names = [
        p.name for p in PRESETS if taught is None or not taught.hidden_topics or p.step <= taught.step or p.name == base
    ]
    picker = f"preset_{common.version()}"
    # Callbacks (here and on Reset) load the preset before the script runs, so the page is drawn once, with it.
    st.selectbox(
        "Preset",
        names,
        index=names.index(base),
        format_func=lambda n: BY_NAME[n].menu_name,
        key=picker,
        on_change=lambda: common.load_preset(st.session_state[picker]),
    )
    if BY_NAME[base].title != BY_NAME[base].menu_name:
        st.caption(BY_NAME[base].title.replace(".", "\\.", 1))  # "3. + Batch norm" is no Markdown list item
    # Filled after the page has run, so "edited" and the share link reflect the change the student just made on it.
    preset_status = st.container()
    if taught is not None:
        st.caption(f"📚 A lesson link: taught up to *{LESSON[taught.step - 1].title}*.")
    st.caption("Share this model: the link opens the same settings (your runs stay yours).")
    share = st.empty()


# The page below is drawn for this many active runs of the student's; the heartbeat redraws it when that changes.
st.session_state.active_drawn = common.manager().active_count(common.owner())
LiveViewWatch.page_started()


@st.fragment(run_every=liveness.HEARTBEAT_S)
def heartbeat() -> None:
    """Tell the job manager this tab is open (on every page), and show what is going on.

    A run that starts or ends out of this page's sight (from the student's other tab, or through a Start whose
    callback ran in a rerun that drew nothing, such as a fragment's timer) redraws the whole page: otherwise the
    Train page would show no run, or a run still going, until the student clicked something.

    So does a live view that has stopped redrawing. On a loaded server about one browser tab in thirty or sixty
    never receives the live view that Start's rerun drew (nor its timer), and shows nothing of its run while this
    heartbeat, drawn earlier in the same rerun, keeps ticking. Missed redraws are counted in heartbeats, not
    seconds, because a busy server delays both alike.
    """
    manager = common.manager()
    manager.touch(common.owner())
    active = manager.active_count(common.owner())
    if LiveViewWatch.lost():
        common.log.warning(liveness.LIVE_VIEW_REDRAWN)
        st.rerun()
    if active != st.session_state.active_drawn:
        st.rerun()
    if active:
        st.caption(f"⏳ {active} run(s) going: see Train")


with st.sidebar:
    heartbeat()

if problem := common.manager().problem():
    st.error(f"Runs can't train right now. {problem}")
elif warning := common.manager().warning():
    st.warning(warning)

if "class_error" in st.session_state:
    st.warning(st.session_state.pop("class_error"))
for note in st.session_state.pop("lesson_notes", []):
    st.info(note, icon="📚")
if "link_error" in st.session_state:
    error = st.session_state.pop("link_error")
    st.warning(f"The link's settings could not be loaded, so the default model is shown. {error}")

page.run()

# A note the page itself caused (a stack whose own settings the lesson dropped) is said at the top, in one redraw.
said_late = st.session_state.pop("redrawn_for_notes", False)
if st.session_state.get("lesson_notes") and not said_late:
    st.session_state.redrawn_for_notes = True
    st.rerun()

with preset_status:
    base = st.session_state.preset_name
    edited = matching_preset(common.config()) != base
    st.button("Reset to preset", disabled=not edited, width="stretch", on_click=common.load_preset, args=(base,))
    if network := gallery.matching(common.config()):
        st.caption(f"Loaded from the write-ups: *{network.title}*.")
    elif edited:
        st.caption(f"Edited since *{BY_NAME[base].title}* was loaded.")
share.code(common.share_link(), language=None, wrap_lines=True)

if common.is_teacher() and common.teacher_key():
    with st.sidebar.expander("Lesson link (teacher)"):
        step = st.selectbox(
            "Taught so far",
            range(FIRST_STEP, LAST_STEP + 1),
            index=LAST_STEP - FIRST_STEP,
            format_func=lambda n: LESSON[n - 1].title,
            key="lesson_step",
            help="Students on the link see only the controls taught up to this step; the others stay hidden, at "
            "the values this model has now.",
        )
        st.code(common.lesson_link(step), language=None, wrap_lines=True)
        st.caption(Lesson.of(step, common.config()).hidden_note())
        if matching_preset(common.config()) != LESSON[step - 1].name:
            st.warning(
                f"This model is not the preset *{LESSON[step - 1].title}*, so the hidden values above are this "
                "model's. For the step's own, pick it under **Preset** first."
            )
