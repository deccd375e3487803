"""The controls the pages show for config fields (their labels, the values' names, which knobs each optimizer and
schedule reads), and a config error told in those labels, blaming the control the student changed."""

from __future__ import annotations

import re
from typing import Any

from drill.config import ConfigError, RunConfig, shorten

BN_LABELS = {"off": "Off", "before_relu": "Before ReLU", "after_relu": "After ReLU"}
HEAD_LABELS = {
    "fc": "Flatten → fully connected",
    "gap_conv": "GAP → 1x1 conv",
    "gap_linear": "GAP → linear",
    "conv_gap": "1x1 conv → GAP",
    "none": "Last conv makes the 10 outputs",
}
DROPOUT_KIND_LABELS = {"element": "Element (Dropout)", "channel": "Channel (Dropout2d)"}
OPTIMIZER_LABELS = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}
DEVICE_LABELS = {"auto": "Auto: a GPU if there is one", "cpu": "CPU", "cuda": "GPU (CUDA)"}
SCHEDULE_LABELS = {
    "none": "Constant",
    "step": "StepLR",
    "onecycle": "OneCycleLR",
    "plateau": "ReduceLROnPlateau",
    "cosine": "Cosine annealing",
}
# A choice field's values as the page names them.
VALUE_LABELS = {
    "model.batch_norm": BN_LABELS,
    "model.head": HEAD_LABELS,
    "model.dropout_kind": DROPOUT_KIND_LABELS,
    "train.optimizer": OPTIMIZER_LABELS,
    "train.schedule": SCHEDULE_LABELS,
    "train.device": DEVICE_LABELS,
}
# Every field a page has a control for, by the label on that control: the pages take their labels from here, so a
# message names the control the student sees.
LABELS = {
    "model.layers": "Layer stack",
    "model.batch_norm": "Batch norm",
    "model.dropout": "Dropout rate",
    "model.dropout_kind": "Dropout kind",
    "model.head": "Head",
    "model.bias": "Bias in convolutions",
    "model.log_softmax": "Log-softmax output (NLL loss)",
    "model.hidden": "Hidden layers (widths, e.g. 64 or 128,64)",
    "model.hidden_dropout": "Hidden-layer dropout",
    "augment.rotation": "Rotation (± degrees)",
    "augment.translate": "Shift (± fraction of the side)",
    "augment.scale": "Zoom (1 ± this)",
    "augment.shear": "Shear (± degrees)",
    "augment.fill": "Fill moved-in area (0 black, 1 white)",
    "augment.brightness": "Brightness (1 ± this)",
    "augment.contrast": "Contrast (1 ± this)",
    "augment.erase_prob": "Cutout probability",
    "augment.erase_size": "Cutout size (fraction of the side)",
    "train.epochs": "Epochs",
    "train.batch_size": "Batch size",
    "train.optimizer": "Optimizer",
    "train.lr": "Learning rate",
    "train.momentum": "Momentum",
    "train.weight_decay": "Weight decay",
    "train.schedule": "LR schedule",
    "train.step_size": "Step every (epochs)",
    "train.gamma": "Decay factor (gamma)",
    "train.max_lr": "Peak LR (max_lr)",
    "train.pct_start": "Warm-up fraction",
    "train.subset": "Training images (0 = all 60,000)",
    "train.seed": "Seed",
    "train.device": "Device",
}
# Which TrainConfig fields each optimizer and schedule reads; the others are hidden so students only see knobs that
# matter (Adam and AdamW have no momentum knob).
OPTIMIZER_FIELDS = {
    "sgd": ("lr", "momentum", "weight_decay"),
    "adam": ("lr", "weight_decay"),
    "adamw": ("lr", "weight_decay"),
}
SCHEDULE_FIELDS = {
    "none": (),
    "step": ("step_size", "gamma"),
    "onecycle": ("max_lr", "pct_start"),
    "plateau": ("gamma",),
    "cosine": (),
}

# Controls as (field, step, widget[, number format]): one declaration per knob, so the Train page stays a short loop.
TRAIN_CONTROLS = (
    ("lr", 0.001, "number", "%.5g"),
    ("momentum", 0.01, "slider"),
    ("weight_decay", 0.0001, "number", "%.5g"),
    ("step_size", 1, "slider"),
    ("gamma", 0.01, "slider"),
    ("max_lr", 0.01, "number"),
    ("pct_start", 0.05, "slider"),
)
AUGMENT_CONTROLS = (
    ("rotation", 0.5, "slider"),
    ("translate", 0.01, "slider"),
    ("scale", 0.01, "slider"),
    ("shear", 0.5, "slider"),
    ("fill", 0.05, "slider"),
    ("brightness", 0.05, "slider"),
    ("contrast", 0.05, "slider"),
    ("erase_prob", 0.05, "slider"),
    ("erase_size", 0.05, "slider"),
)


def train_controls(setting: str, choice: str) -> list[tuple]:
    """The TRAIN_CONTROLS that the chosen optimizer or schedule (setting) reads, in the order the page shows them."""
    fields = {"optimizer": OPTIMIZER_FIELDS, "schedule": SCHEDULE_FIELDS}[setting][choice]
    return [control for control in TRAIN_CONTROLS if control[0] in fields]


def name(field: str) -> str:
    """A field's control as a message names it: its label without the hint in brackets ("Training images")."""
    label = LABELS.get(field)
    return re.sub(r"\s*\(.*\)$", "", label) if label else field


def shown(field: str, value: Any) -> str:
    """A value as its control shows it: a choice by its label, a toggle as on/off, a number plainly."""
    if field in VALUE_LABELS and value in VALUE_LABELS[field]:
        return VALUE_LABELS[field][value]
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:g}"
    return repr(shorten(value))


def changed_fields(cfg: RunConfig, sections: dict[str, dict]) -> dict[str, Any]:
    """The fields a page's widgets hold at values other than cfg's, by dotted name: what the student just changed."""
    return {
        f"{section}.{field}": value
        for section, values in sections.items()
        for field, value in values.items()
        if getattr(getattr(cfg, section), field) != value
    }


def config_message(error: ConfigError, changed: dict[str, Any]) -> str:
    """A config error in the page's words: the control the student changed (one of the fields the broken rule reads,
    else the field it is about), its value, and what is allowed or how to fix it."""
    blamed = next((field for field in error.involved if field in changed), error.field)
    own = f"**{name(error.field)}**" + ("" if error.value is None else f" = {shown(error.field, error.value)}")
    if blamed == error.field:
        return f"{own} can't be used: {error.allowed}."
    return f"**{name(blamed)}** = {shown(blamed, changed[blamed])} can't be used with {own}: {error.allowed}."
