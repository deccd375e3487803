"""The heartbeat's watch over the Train page's live view, kept in the session: the one owner of its session keys,
which app.py's heartbeat and views/train.py's live view share."""

import streamlit as st

from drill import liveness


class LiveViewWatch:
    """How many heartbeats the live view of a run has missed (None on a page without one) and how many the
    heartbeat waits before it redraws the page (drill.liveness.live_view_check)."""

    MISSED, PATIENCE = "live_missed", "live_patience"

    @classmethod
    def page_started(cls) -> None:
        """A page run begins: no live view has drawn in it yet."""
        st.session_state[cls.MISSED] = None

    @classmethod
    def view_drawn(cls) -> None:
        """The live view of an active run drew: the heartbeat counts its misses from here."""
        st.session_state[cls.MISSED] = 0

    @classmethod
    def run_started(cls) -> None:
        """A new run's view gets the heartbeat's first, short patience again."""
        st.session_state.pop(cls.PATIENCE, None)

    @classmethod
    def lost(cls) -> bool:
        """One heartbeat's look: whether the live view has stopped redrawing and the page must be redrawn."""
        patience = st.session_state.get(cls.PATIENCE, liveness.LIVE_VIEW_MISSES)
        missed, patience, lost = liveness.live_view_check(st.session_state.get(cls.MISSED), patience)
        st.session_state[cls.MISSED], st.session_state[cls.PATIENCE] = missed, patience
        return lost
