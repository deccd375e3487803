"""The Build page's stack editor, without streamlit: the layer stack as table rows (each layer's own settings, with
the model's toggles filled in where the layer has none) and back, and the draft kept while a student edits it."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from drill.errors import ConfigError
from drill.stack import DROPOUT_KINDS, MAX_CHANNELS, MAX_DROPOUT, Layer, format_layers, parse_layers, settings

# The "kind" column, and the layer each kind is.
CONV, TRANSITION, POOL, AVG_POOL = "conv 3x3", "transition 1x1", "max-pool 2x2", "avg-pool 2x2"
CONV5, CONV7 = "conv 5x5", "conv 7x7"
KINDS = {
    CONV: Layer("conv", kernel=3),
    TRANSITION: Layer("conv", kernel=1),
    CONV5: Layer("conv", kernel=5),
    CONV7: Layer("conv", kernel=7),
    POOL: Layer("pool", kernel=2, pool="max"),
    AVG_POOL: Layer("pool", kernel=2, pool="avg"),
}
LAYER_KINDS = tuple(KINDS)
BN_CHOICES = {"off": "off", "before_relu": "before ReLU", "after_relu": "after ReLU"}
# The columns, in the order the editor shows them; a pool uses only kind, dropout and dropout kind.
COLUMNS = ("kind", "channels", "padding", "batch norm", "BN learnable", "ReLU", "dropout", "dropout kind", "bias")
# The columns that set a layer's own batch norm or dropout, by the drill.stack.Layer field they write.
LAYER_FIELD_OF = {"batch norm": "bn", "BN learnable": "affine", "dropout": "dropout", "dropout kind": "dropout_kind"}


def stack_rows(spec: str, model: Any) -> list[dict]:
    """The compact stack as editor rows, each layer's settings as the network has them."""
    rows = []
    for layer in parse_layers(spec):
        own = settings(layer, model)
        kind = next(name for name, made in KINDS.items() if (made.kind, made.kernel, made.pool) == _shape(layer))
        row = {"kind": kind, "dropout": own["dropout"], "dropout kind": own["dropout_kind"]}
        if layer.kind == "conv":
            row |= {
                "channels": layer.channels,
                "padding": bool(layer.padding),
                "batch norm": BN_CHOICES[own["bn"]],
                "BN learnable": layer.affine,
                "ReLU": layer.relu,
                "bias": own["bias"],
            }
        rows.append({column: row.get(column) for column in COLUMNS})
    return rows


def _shape(layer: Layer) -> tuple:
    return (layer.kind, layer.kernel, layer.pool if layer.kind == "pool" else "max")


def rows_to_stack(rows: list[dict], model: Any) -> str:
    """Editor rows back to the compact stack, each setting written only where it differs from the model's toggle
    (so flipping a toggle still sets every row that follows it). A row with no kind or no channels raises
    ConfigError naming it (with no value: the stack has no text yet)."""
    return format_layers(tuple(_row_layer(position, row, model) for position, row in enumerate(rows, start=1)))


def _row_layer(position: int, row: dict, model: Any) -> Layer:
    kind = row.get("kind")
    if kind not in KINDS:
        raise ConfigError("model.layers", None, f"row {position} needs a kind: " + ", ".join(LAYER_KINDS))
    layer = KINDS[kind]
    rate = _number(row.get("dropout"))
    dropout_kind = row.get("dropout kind") if row.get("dropout kind") in DROPOUT_KINDS else None
    if rate is not None and not 0 <= rate <= MAX_DROPOUT:
        raise ConfigError("model.layers", None, f"row {position} needs a dropout rate from 0 to {MAX_DROPOUT}")
    if layer.kind == "pool":
        rate = rate or 0.0
        kind_differs = dropout_kind not in (None, model.dropout_kind)
        return replace(
            layer,
            dropout=rate if rate > 0 else None,
            dropout_kind=dropout_kind if rate > 0 and kind_differs else None,
        )
    channels = _number(row.get("channels"))
    if channels is None or channels != int(channels) or not 1 <= channels <= MAX_CHANNELS:
        raise ConfigError(
            "model.layers", None, f"row {position} needs a whole number of channels from 1 to {MAX_CHANNELS:,}"
        )
    bn = next((mode for mode, shown in BN_CHOICES.items() if shown == row.get("batch norm")), None)
    bias = _checked(row.get("bias")) if row.get("bias") is not None else None
    padded = _checked(row.get("padding")) and layer.kernel > 1
    return replace(
        layer,
        channels=int(channels),
        padding=layer.kernel // 2 if padded else 0,
        bias=None if bias in (None, model.bias) else bias,
        bn=None if bn in (None, model.batch_norm) else bn,
        affine=row.get("BN learnable") is None or _checked(row.get("BN learnable")),
        relu=row.get("ReLU") is None or _checked(row.get("ReLU")),
        dropout=None if rate in (None, model.dropout) else rate,
        dropout_kind=None if dropout_kind in (None, model.dropout_kind) else dropout_kind,
    )


def _number(value) -> float | None:
    """A number cell's value; an empty (None/NaN) cell is None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def _checked(value) -> bool:
    """A checkbox cell's value as a bool; an empty (None/NaN) cell is unchecked."""
    return isinstance(value, (bool, np.bool_)) and bool(value)


def canonical_stack(spec: str) -> str | None:
    """The stack in its canonical spelling ("8, 16p" -> "8,16p"), or None if it does not parse."""
    try:
        return format_layers(parse_layers(spec))
    except ConfigError:
        return None


def _has_edits(editor_state: dict | None) -> bool:
    """Whether a row editor's widget state holds any edit since the editor was created."""
    return bool(editor_state) and any(editor_state.get(part) for part in ("edited_rows", "added_rows", "deleted_rows"))


@dataclass
class StackDraft:
    """The layer stack being edited on the Build page, kept in the session across reruns.

    `text` is its latest spelling (maybe invalid); `base` is what the row editor started from. Bumping `editor`
    gives the row editor a new key, the only way to make it start over from `base`.
    """

    version: int  # the config version it began from: a config replaced from outside (a preset) starts a new draft
    base: str
    text: str
    editor: int = 0

    def typed(self, text: str) -> None:
        """The compact text changed: it becomes the stack, and the row editor restarts from it."""
        canonical = canonical_stack(text)
        self.text = canonical or text  # "8, 16p" and "8,16p" are one model, one link
        self.base = canonical or self.base
        self.editor += 1

    def rebase(self) -> None:
        """Point a row editor that is about to be created (or re-created) at the text, if the text parses."""
        self.base = canonical_stack(self.text) or self.base

    @property
    def in_step(self) -> bool:
        """Whether the rows show the text: not while the text does not parse (the rows keep the last valid stack)."""
        return canonical_stack(self.text) == canonical_stack(self.base) is not None

    def take_rows(self, editor_state: dict | None, rows: list[dict], model: Any) -> ConfigError | None:
        """Once the row editor holds an edit, its rows become the text; a bad row is returned and leaves the text."""
        if not _has_edits(editor_state):
            return None
        try:
            self.text = rows_to_stack(rows, model)
        except ConfigError as error:
            return error
        return None
