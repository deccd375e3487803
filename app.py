"""Drill-Down Lab: navigation, the shared sidebar (preset picker) and the heartbeat that keeps runs alive."""

import streamlit as st

from drill.presets import BY_NAME, PRESETS, get_preset
from pages import common

st.set_page_config(page_title="Drill-Down Lab", page_icon="🔬", layout="wide")
common.init_config()

pages = [
    st.Page("pages/drilldown.py", title="Drill-down", icon="🪜", default=True),
    st.Page("pages/build.py", title="Build", icon="🧱"),
    st.Page("pages/train.py", title="Train", icon="📈"),
    st.Page("pages/compare.py", title="Compare", icon="⚖️"),
    st.Page("pages/inspect.py", title="Inspect", icon="🔍"),
]
page = st.navigation(pages)

with st.sidebar:
    st.markdown("### Current model")
    names = [p.name for p in PRESETS]
    base = st.session_state.setdefault("preset_name", common.matching_preset(common.config()) or common.DEFAULT_PRESET)
    choice = st.selectbox("Preset", names, index=names.index(base), format_func=lambda n: BY_NAME[n].title,
                          key=f"preset_{common.version()}")  # fmt: skip
    edited = common.matching_preset(common.config()) != base
    if choice != base or st.button("Reset to preset", disabled=not edited, use_container_width=True):
        st.session_state.preset_name = choice
        common.set_config(get_preset(choice).config, from_widgets=False)
        st.rerun()
    if edited:
        st.caption(f"Edited since *{BY_NAME[base].title}* was loaded.")
    st.caption("The URL holds this model and its settings: share it to open the same lab.")

@st.fragment(run_every=2.0)
def heartbeat() -> None:
    """Tell the job manager this tab is open (on every page), and show what is going on."""
    manager = common.manager()
    manager.touch(common.owner())
    active = [s for s in manager.snapshots(common.owner()) if s.status in ("queued", "running")]
    if active:
        st.sidebar.caption(f"⏳ {len(active)} run(s) going: see Train")


heartbeat()

if "link_error" in st.session_state:
    st.warning(f"The link's settings could not be loaded, so the default model is shown. {st.session_state.pop('link_error')}")

page.run()
