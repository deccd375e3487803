"""The pages' controls by their labels, and config errors told in them: the control the student changed is the one
named, with its value and the fix, never a field's internal name."""

from __future__ import annotations

import dataclasses

import pytest

from drill import controls
from drill.config import AugmentConfig, ConfigError, ModelConfig, RunConfig, TrainConfig
from drill.presets import BY_NAME

QUICK = BY_NAME["quick"].config  # batches of 64, 3 epochs, OneCycleLR warming up for 0.2 of the run


def refused(cfg: RunConfig, **sections) -> str:
    """The page's message for changing cfg's sections to these values."""
    with pytest.raises(ConfigError) as caught:
        cfg.replace(**sections)
    return controls.config_message(caught.value, controls.changed_fields(cfg, sections))


def test_every_field_a_page_shows_has_a_label_and_every_label_a_field():
    sections = {"model": ModelConfig, "augment": AugmentConfig, "train": TrainConfig}
    fields = {f"{name}.{f.name}" for name, cls in sections.items() for f in dataclasses.fields(cls)}
    assert set(controls.LABELS) == fields - {"train.threads"}  # threads are the scheduler's, not a student's


# Runs of 320 or 1,000 images are valid as they are (15 or 48 optimizer steps) and too short once the control changes.
@pytest.mark.parametrize(
    "images, sections, expected",
    [
        # The control changed is blamed, with the rule it broke and how to fix it.
        (
            6000,
            {"train": {"subset": 100}},
            "**Training images** = 100 can't be used with **Warm-up fraction** = 0.2: OneCycleLR's warm-up must last "
            "at least 2 of the run's 6 optimizer steps (this one lasts 1.2): train on more images or for more epochs, "
            "warm up longer, use a smaller batch size, or another LR schedule.",
        ),
        (320, {"train": {"pct_start": 0.05}}, "**Warm-up fraction** = 0.05 can't be used: OneCycleLR's warm-up"),
        (320, {"train": {"epochs": 1}}, "**Epochs** = 1 can't be used with **Warm-up fraction** = 0.2"),
        (1000, {"train": {"batch_size": 512}}, "**Batch size** = 512 can't be used with **Warm-up fraction** = 0.2"),
        (6000, {"train": {"subset": 50}}, "**Training images** = 50 can't be used: 0 (all) or at least one batch (64"),
        (6000, {"model": {"dropout": 0.7}}, "**Dropout rate** = 0.7 can't be used: a number from 0.0 to 0.5."),
        (6000, {"model": {"layers": "8,M,M,M,M,M"}}, "**Layer stack** = '8,M,M,M,M,M' can't be used: after layer 6"),
        (6000, {"augment": {"rotation": 90.0}}, "**Rotation** = 90 can't be used: a number from 0.0 to 45.0."),
    ],
)
def test_a_config_error_names_the_control_changed_in_the_pages_words(images, sections, expected):
    message = refused(QUICK.replace(train={"subset": images}), **sections)
    assert message.startswith(expected), message
    assert "train." not in message and "model." not in message and "augment." not in message


def test_a_choice_and_a_toggle_are_shown_as_the_page_shows_them():
    assert controls.shown("train.schedule", "onecycle") == "OneCycleLR"
    assert controls.shown("model.bias", True) == "on"
    assert controls.shown("train.subset", 60000) == "60,000"
    assert controls.name("train.subset") == "Training images"
    assert controls.name("something.else") == "something.else"
