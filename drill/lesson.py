"""Lesson links: a link the teacher makes that shows only the controls taught so far, with the rest hidden and locked
at the link's values (in the spirit of TensorFlow Playground's links with hidden controls).

A lesson travels in the link as `lesson=`: the step taught so far and the hidden controls' values, signed with a key
derived from the server's teacher key. A student can't forge or edit one, so retyping a hidden setting in another
page's address (`&drop=0.3`) changes nothing: the locked value wins over the link's own settings, always.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

from drill.config import AugmentConfig, RunConfig, field_names
from drill.controls import name, shown
from drill.stack import without

LESSON_PARAM = "lesson"
MAX_TOKEN_CHARS = 2000  # the hidden controls' values fit in a few hundred; longer is not a link the app made
_SIGNATURE_BYTES = 16


@dataclass(frozen=True)
class Topic:
    """Controls the lesson introduces at one step: config fields (dotted names) and the layers' own settings of them
    (drill.stack.Layer fields, which would set them row by row)."""

    title: str
    step: int
    fields: tuple[str, ...]
    layer_fields: tuple[str, ...] = ()


# The drill-down's steps (drill.presets.LESSON) and the controls each brings in; the layer stack (channels, 1x1
# transitions, max-pools), bias and the optimizer are there from step 1.
TOPICS = (
    Topic("Batch norm", 3, ("model.batch_norm",), ("bn", "affine")),
    Topic("Dropout", 4, ("model.dropout", "model.dropout_kind", "model.hidden_dropout"), ("dropout", "dropout_kind")),
    Topic("Augmentation", 4, tuple(f"augment.{f}" for f in field_names(AugmentConfig))),
    Topic("Head", 5, ("model.head", "model.hidden")),
    Topic("LR schedule", 5, ("train.schedule", "train.step_size", "train.gamma", "train.max_lr", "train.pct_start")),
)
FIRST_STEP, LAST_STEP = 1, max(topic.step for topic in TOPICS)


class LessonError(ValueError):
    """A lesson link that can't be used; the message says why and what the student sees instead."""


@dataclass(frozen=True)
class Lesson:
    """The step taught so far and the values its hidden controls are locked at, by dotted field name."""

    step: int
    locked: tuple[tuple[str, Any], ...]

    @classmethod
    def of(cls, step: int, cfg: RunConfig) -> Lesson:
        """The lesson at this step, its hidden controls locked at cfg's values."""
        if not FIRST_STEP <= step <= LAST_STEP:
            raise LessonError(f"A lesson's step is one of {FIRST_STEP} to {LAST_STEP}, not {step}.")
        hidden = [field for topic in TOPICS if topic.step > step for field in topic.fields]
        return cls(step, tuple((field, _value(cfg, field)) for field in hidden))

    @property
    def hidden_topics(self) -> tuple[Topic, ...]:
        return tuple(topic for topic in TOPICS if topic.step > self.step)

    def shows(self, field: str) -> bool:
        """Whether the page draws this field's control (a dotted name, e.g. "model.dropout")."""
        return all(field not in topic.fields for topic in self.hidden_topics)

    def shows_layer(self, layer_field: str) -> bool:
        """Whether the stack editor shows the layers' own setting of this (a drill.stack.Layer field)."""
        return all(layer_field not in topic.layer_fields for topic in self.hidden_topics)

    def hidden_note(self) -> str:
        """What the lesson hides, with the values it keeps them at: each topic's main control and any other it sets
        away from its default."""
        if not self.hidden_topics:
            return "Every control is shown: the lesson has reached them all."
        default, locked = RunConfig(), dict(self.locked)
        parts = []
        for topic in self.hidden_topics:
            kept = [f for f in topic.fields if f == topic.fields[0] or locked[f] != _value(default, f)]
            values = ", ".join(
                shown(f, locked[f]) if name(f) == topic.title else f"{name(f)} {shown(f, locked[f])}" for f in kept
            )
            parts.append(f"**{topic.title}** ({values})")
        return "Not taught yet, so hidden and kept as the lesson link sets them: " + "; ".join(parts) + "."

    def visible_params(self, cfg: RunConfig) -> dict[str, str]:
        """cfg's link settings without the hidden controls': the lesson= value carries those."""
        hidden = {
            f.metadata["key"]
            for section in ("model", "augment", "train")
            for f in dataclasses.fields(getattr(cfg, section))
            if not self.shows(f"{section}.{f.name}")
        }
        return {key: text for key, text in cfg.to_query_params().items() if key not in hidden}

    def apply(self, cfg: RunConfig) -> tuple[RunConfig, list[str]]:
        """cfg with the hidden controls at their locked values and the layers' own settings of them dropped, and a
        note for each hidden control cfg had set otherwise. Raises ConfigError when the locked values can't go with
        cfg's visible ones (its message names the hidden control)."""
        sections: dict[str, dict] = {}
        changed = [field for field, value in self.locked if _value(cfg, field) != value]
        for field, value in self.locked:
            section, attr = field.split(".")
            sections.setdefault(section, {})[attr] = value
        layer_fields = [f for topic in self.hidden_topics for f in topic.layer_fields]
        layers = without(cfg.model.layers, *layer_fields) if layer_fields else cfg.model.layers
        sections.setdefault("model", {})["layers"] = layers
        new = cfg.replace(**sections)
        notes = []
        if changed:
            notes.append(
                "Set by the lesson, so left as the link has them: "
                + ", ".join(f"**{name(field)}**" for field in changed)
                + "."
            )
        if layers != cfg.model.layers:
            titles = " and ".join(
                t.title.lower()
                for t in self.hidden_topics
                if t.layer_fields and without(cfg.model.layers, *t.layer_fields) != cfg.model.layers
            )
            notes.append(f"The layer stack's own {titles} settings were dropped: the lesson has not reached them yet.")
        return new, notes

    def token(self, secret: bytes) -> str:
        """The lesson as the link's lesson= value: its step, its locked values, and their signature."""
        default = RunConfig()  # only the values away from their defaults: a shorter link to hand out
        changed = {field: value for field, value in self.locked if value != _value(default, field)}
        body = json.dumps({"step": self.step, "locked": changed}, separators=(",", ":"))
        payload = base64.urlsafe_b64encode(body.encode()).rstrip(b"=").decode()
        return f"{payload}.{_sign(secret, payload)}"

    @classmethod
    def from_token(cls, token: str, secret: bytes | None) -> Lesson:
        """The lesson a link's lesson= value carries; LessonError when it is not one this server's teacher made."""
        if secret is None:
            raise LessonError(
                "This server has no teacher key, so it can't check the link's lesson: every control is shown."
            )
        payload, _, signature = token.partition(".")
        # compare_digest takes only ASCII text; a link's value can hold anything
        forged = len(token) > MAX_TOKEN_CHARS or not token.isascii()
        if forged or not hmac.compare_digest(_sign(secret, payload), signature):
            raise LessonError(
                "The link's lesson= part is not one this server's teacher made (it was changed or cut short), so "
                "every control is shown. Ask your teacher for the lesson link again."
            )
        try:
            body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            step, changed = int(body["step"]), dict(body["locked"])
            defaults = dict(cls.of(step, RunConfig()).locked)
            for field, value in changed.items():
                if field not in defaults or not _same_kind(value, defaults[field]):
                    raise ValueError(f"{name(field)} = {value!r}")
            lesson = cls(step, tuple((field, changed.get(field, default)) for field, default in defaults.items()))
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as error:
            # Signed by this server's key, so made by an older version of the app with other controls.
            raise LessonError(
                f"The lesson link was made for other controls than this version of the app has ({error}), so every "
                "control is shown. Ask your teacher for a new lesson link."
            ) from error
        return lesson


def secret_of(teacher_key: str | None) -> bytes | None:
    """The key lesson links are signed with: derived from the teacher key, so a link never reveals it."""
    if not teacher_key:
        return None
    return hashlib.sha256(b"drill-down lab lesson link\0" + teacher_key.encode()).digest()


def _sign(secret: bytes, payload: str) -> str:
    digest = hmac.new(secret, payload.encode(), hashlib.sha256).digest()[:_SIGNATURE_BYTES]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _same_kind(value: Any, default: Any) -> bool:
    """Whether a locked value is of its field's type (a whole number does for a float field); its range is checked
    when the lesson is applied to a config."""
    if isinstance(default, bool) or isinstance(value, bool):
        return type(value) is type(default)
    return isinstance(value, type(default)) or (isinstance(default, float) and isinstance(value, int))


def _value(cfg: RunConfig, field: str) -> Any:
    section, attr = field.split(".")
    return getattr(getattr(cfg, section), attr)
