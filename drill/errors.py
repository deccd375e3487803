"""The error a config that cannot be used raises, shared by the config and the layer stack it parses."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """An invalid config value or combination; the message names the field, the value and what is allowed.

    `involved` names every field the broken rule reads (the field itself first), so a page can blame the control
    the student actually changed: a run too short for OneCycleLR's warm-up is caused as much by fewer training
    images as by the warm-up fraction."""

    def __init__(self, field_name: str, value: Any, allowed: str, involved: tuple[str, ...] = ()):
        self.field = field_name
        self.value = value
        self.allowed = allowed
        self.involved = (field_name, *involved)
        shown = repr(value)
        if len(shown) > 80:  # a pasted stack or a 400-digit number must not flood the page
            shown = f"{shown[:60]}... ({len(value) if isinstance(value, str) else len(shown)} characters)"
        self.shown = shown
        super().__init__(f"{field_name} = {shown} is not allowed: {allowed}")


def shorten(value: Any, limit: int = 60) -> str:
    """A value cut short for a message, so a huge or hostile input never floods the page."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"
