"""Keeping a page's view of a run alive: how often the heartbeat beats, how often a page polls a run, and the
watchdog that redraws a live view a loaded server stopped delivering."""

from __future__ import annotations

# Often enough to notice a closed tab well inside the job manager's 5-minute grace; rarely enough that a class's
# heartbeats cost the server little. Longer than the slowest poll below (4 s), so a live view of a run redraws at least
# once between two heartbeats.
HEARTBEAT_S = 5.0
# Heartbeats in a row without a redraw of the live view after which it first counts as lost (about 20 s).
LIVE_VIEW_MISSES = 3
# What the server logs when the heartbeat redraws a lost live view (the load test counts these lines).
LIVE_VIEW_REDRAWN = "a live view of a run stopped redrawing; redrawing its page"


def live_view_check(missed: int | None, patience: int) -> tuple[int | None, int, bool]:
    """One heartbeat's look at the Train page's live view of a run: (heartbeats it has now missed, the patience
    for next time, whether to redraw the page). missed is None on a page without a live view.

    A page that is only slow to receive its redraw (a loaded server flushes late) would be redrawn again and
    again, so the patience doubles with each redraw: a lost view comes back at once, a slow one costs a rerun or two.
    """
    if missed is None:
        return None, patience, False
    missed += 1
    if missed > patience:
        return missed, 2 * patience, True
    return missed, patience, False


def poll_seconds(online: int) -> float:
    """How often a page redraws a run: every second for a few students, less often for a class, whose redraws
    would otherwise take the CPU from the very run they wait for."""
    return float(min(4, 1 + online // 10))
