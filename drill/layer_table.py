"""What the Build page shows of a model beside its controls: the torchinfo layer table and the notes on its
parameters, cost and receptive field."""

from __future__ import annotations

from drill.analysis import PARAM_BUDGET
from drill.summary import Summary


def layer_table(summary: Summary) -> list[dict]:
    """The torchinfo rows as the Build page's table: layer, type, output shape, params and receptive field."""
    return [
        {
            "layer": row.name,
            "type": row.kind,
            "output shape": " x ".join(map(str, row.output_shape)),
            "params": row.params,
            "RF": f"{row.rf}x{row.rf}",
        }
        for row in summary.rows
    ]


def table_height(rows: int) -> int:
    """Pixels that show a table's header and every row: a long table that scrolled inside itself hid its first rows
    from a student scrolling the page."""
    return 36 * (rows + 1) + 2


def budget_delta(params: int) -> str:
    """The parameter count against the budget, as the metric's delta."""
    return f"{params - PARAM_BUDGET:+,} vs the {PARAM_BUDGET:,} budget"


def cost_note(summary: Summary) -> str:
    """The model's compute and memory per image, in one line."""
    return (
        f"{summary.mult_adds:,} multiply-adds per image · about {summary.memory_mb:.2f} MB per image "
        "(input, activations and parameters)"
    )


def rf_note(rf: int, image: int = 28) -> str:
    """Whether the last feature map's values see the whole digit, in words."""
    if rf >= image:
        return f"Each value of the last feature map sees {rf}x{rf} input pixels: the whole {image}x{image} image."
    return (
        f"Each value of the last feature map sees a {rf}x{rf} patch of the {image}x{image} image: the head combines "
        "the patches, but no single feature sees the whole digit. Another conv or an earlier max-pool widens it."
    )
