"""The drawing canvas: a custom component made of one plain HTML file (components/canvas/index.html) that speaks
Streamlit's component protocol itself, so it needs no package to pin and no JavaScript build."""

from pathlib import Path

import streamlit.components.v1 as components

FILES = Path(__file__).parent / "components" / "canvas"


def digit_canvas(side: int, pen: int, key: str) -> str | None:
    """A side x side black square to draw on with a round white pen (pen px wide), with Undo and Clear buttons.

    Returns the drawing as a PNG data URL, sent at the end of each stroke, Undo or Clear; None while nothing is drawn.
    """
    # Declared at each call, not once at import: the registry belongs to the running Streamlit runtime, and AppTest
    # sets up a runtime of its own for every run. (A page script can't declare it: it has no module to be named by.)
    component = components.declare_component("digit_canvas", path=FILES)
    return component(side=side, pen=pen, key=key, default=None)
