"""Run configuration: frozen dataclasses for model, augmentation and training, validated on construction.

Every field declares its URL key, its range or choices and a help text in one place (its metadata); validation,
dict/JSON and URL round trips and the app's widgets all read that one declaration.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

from drill.errors import ConfigError, shorten
from drill.stack import LAYER_SYNTAX, MAX_DROPOUT, Layer, parse_layers, plan

# Activations kept for backward, estimated per run; the cap keeps one run (plus the test pass) well inside the
# few hundred MB a shared Streamlit Cloud server can spare per student.
ACTIVATION_BUDGET_MB = 256
TRAIN_SIZE = 60_000


def _num(key: str, default, lo, hi, help: str, *, integer: bool = False):
    """A numeric field in [lo, hi]."""
    return field(default=default, metadata={"key": key, "range": (lo, hi), "integer": integer, "help": help})


def _choice(key: str, default: str, choices: tuple[str, ...], help: str):
    """A field taking one of a few named values."""
    return field(default=default, metadata={"key": key, "choices": choices, "help": help})


def _flag(key: str, default: bool, help: str):
    """An on/off field."""
    return field(default=default, metadata={"key": key, "flag": True, "help": help})


def _text(key: str, default: str, help: str):
    """A free-text field validated by its dataclass (the layer stack)."""
    return field(default=default, metadata={"key": key, "text": True, "help": help})


class _Validated:
    """Checks every field against its declared range or choices after construction."""

    SECTION = ""

    def __post_init__(self):
        for f in dataclasses.fields(self):
            _check_field(f"{self.SECTION}.{f.name}", getattr(self, f.name), f.metadata)
        self._check_combination()

    def _check_combination(self):
        """Cross-field rules; overridden where a section has some."""


def _check_field(name: str, value: Any, meta) -> None:
    """Raise ConfigError unless value fits the field's declaration."""
    if "choices" in meta:
        if value not in meta["choices"]:
            raise ConfigError(name, value, "one of " + ", ".join(meta["choices"]))
    elif meta.get("flag"):
        if not isinstance(value, bool):
            raise ConfigError(name, value, "true or false")
    elif meta.get("text"):
        if not isinstance(value, str):
            raise ConfigError(name, value, "a string")
    else:
        lo, hi = meta["range"]
        kind = "a whole number" if meta["integer"] else "a number"
        valid_type = isinstance(value, int) if meta["integer"] else isinstance(value, (int, float))
        # Only floats can be NaN or infinite; an int too large for a float would overflow math.isfinite.
        non_finite = isinstance(value, float) and not math.isfinite(value)
        if isinstance(value, bool) or not valid_type or non_finite or not lo <= value <= hi:
            raise ConfigError(name, value, f"{kind} from {lo} to {hi}")


@dataclass(frozen=True)
class ModelConfig(_Validated):
    """The network: a stack of convs and pools (drill.stack), then a head. Batch norm, dropout and bias apply to
    every conv of the stack unless a layer says otherwise."""

    SECTION = "model"
    layers: str = _text("layers", "8,16,M,T8,16,16,16", "the conv stack: " + LAYER_SYNTAX)
    batch_norm: str = _choice(
        "bn", "off", ("off", "before_relu", "after_relu"), "batch norm after each conv, before or after its ReLU"
    )
    dropout: float = _num("drop", 0.0, 0.0, MAX_DROPOUT, "dropout rate after each conv block (0 = off)")
    dropout_kind: str = _choice(
        "dk", "element", ("element", "channel"), "element: nn.Dropout (single pixels); channel: nn.Dropout2d"
    )
    head: str = _choice(
        "head",
        "fc",
        ("fc", "gap_conv", "gap_linear", "conv_gap", "none"),
        "fc: flatten + fully connected; gap_conv: GAP then 1x1 conv; gap_linear: GAP then linear; "
        "conv_gap: 1x1 conv to 10 channels then GAP; none: the stack's last conv makes the 10 outputs itself",
    )
    bias: bool = _flag("bias", False, "convolutions carry a bias term (redundant before batch norm)")
    log_softmax: bool = _flag("lsm", True, "output log-probabilities (NLL loss) instead of logits (cross-entropy)")
    hidden: str = _text("hid", "", "hidden layers of a linear head (fc, gap_linear): widths such as 128,64, each ReLU")
    hidden_dropout: float = _num("hdrop", 0.0, 0.0, MAX_DROPOUT, "dropout after each hidden layer of the head")

    def _check_combination(self):
        plan(self)

    @property
    def parsed_layers(self) -> tuple[Layer, ...]:
        """The layer stack as Layer objects."""
        return parse_layers(self.layers)


@dataclass(frozen=True)
class AugmentConfig(_Validated):
    """Random per-image augmentation of training batches; everything off by default."""

    SECTION = "augment"
    rotation: float = _num("rot", 0.0, 0.0, 45.0, "random rotation, +- degrees")
    fill: float = _num("fill", 0.0, 0.0, 1.0, "pixel value (0 black .. 1 white) for areas moved in from outside")
    translate: float = _num("shift", 0.0, 0.0, 0.3, "random shift, +- fraction of the image side")
    scale: float = _num("scale", 0.0, 0.0, 0.3, "random zoom factor in 1 +- this")
    shear: float = _num("shear", 0.0, 0.0, 30.0, "random horizontal shear, +- degrees")
    brightness: float = _num("bright", 0.0, 0.0, 0.5, "brightness factor in 1 +- this")
    contrast: float = _num("contrast", 0.0, 0.0, 0.5, "contrast factor in 1 +- this")
    erase_prob: float = _num("erase", 0.0, 0.0, 1.0, "probability of erasing one random square per image (cutout)")
    erase_size: float = _num("esize", 0.3, 0.1, 0.5, "largest erased square, as a fraction of the image side")

    @property
    def enabled(self) -> bool:
        """True if any augmentation changes the images."""
        return any(
            (self.rotation, self.translate, self.scale, self.shear, self.brightness, self.contrast, self.erase_prob)
        )


@dataclass(frozen=True)
class TrainConfig(_Validated):
    """How the network is trained."""

    SECTION = "train"
    epochs: int = _num("ep", 15, 1, 20, "passes over the training set", integer=True)
    batch_size: int = _num("bs", 128, 8, 512, "images per optimizer step", integer=True)
    optimizer: str = _choice("opt", "sgd", ("sgd", "adam", "adamw"), "SGD with momentum, Adam or AdamW")
    lr: float = _num("lr", 0.01, 1e-5, 1.0, "learning rate (the peak rate under OneCycleLR is max_lr)")
    momentum: float = _num("mom", 0.9, 0.0, 0.99, "SGD momentum (ignored by Adam/AdamW)")
    weight_decay: float = _num("wd", 0.0, 0.0, 0.1, "L2 weight decay")
    schedule: str = _choice(
        "sched", "none", ("none", "step", "onecycle", "plateau", "cosine"), "how the learning rate changes over the run"
    )
    step_size: int = _num("step", 6, 1, 20, "StepLR: epochs between decays", integer=True)
    gamma: float = _num("gamma", 0.1, 0.01, 1.0, "StepLR / ReduceLROnPlateau: factor applied at each decay")
    max_lr: float = _num("maxlr", 0.1, 1e-4, 1.0, "OneCycleLR: peak learning rate")
    pct_start: float = _num("pct", 0.2, 0.05, 0.5, "OneCycleLR: fraction of the run spent warming up")
    subset: int = _num(
        "subset", 0, 0, TRAIN_SIZE, "train on the first N images, stratified (0 = all 60,000)", integer=True
    )
    seed: int = _num("seed", 1, 0, 2**31 - 1, "random seed: same seed and config, same run", integer=True)
    threads: int = _num("threads", 0, 0, 8, "CPU threads for this run (0 = decided by the job scheduler)", integer=True)
    device: str = _choice(
        "dev", "auto", ("auto", "cpu", "cuda"), "where the run trains: a CUDA GPU when there is one (auto), or not"
    )

    def _check_combination(self):
        if 0 < self.subset < self.batch_size:
            raise ConfigError(
                "train.subset",
                self.subset,
                f"0 (all) or at least one batch ({self.batch_size} images) and at most {TRAIN_SIZE}; or a smaller "
                "batch size",
                ("train.batch_size",),
            )
        steps = self.epochs * math.ceil((self.subset or TRAIN_SIZE) / self.batch_size)
        # OneCycleLR divides by the length of its warm-up; under two steps there is no ramp to divide.
        if self.schedule == "onecycle" and self.pct_start * steps < 2:
            raise ConfigError(
                "train.pct_start",
                self.pct_start,
                f"OneCycleLR's warm-up must last at least 2 of the run's {steps} optimizer steps (this one lasts "
                f"{self.pct_start * steps:.1f}): train on more images or for more epochs, warm up longer, use a "
                "smaller batch size, or another LR schedule",
                ("train.subset", "train.epochs", "train.batch_size", "train.schedule"),
            )


_SECTIONS = {"model": ModelConfig, "augment": AugmentConfig, "train": TrainConfig}


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        for name, cls in _SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(name, getattr(self, name), f"a {cls.__name__}")
        needed = plan(self.model).activation_mb(self.train.batch_size)
        if needed > ACTIVATION_BUDGET_MB:
            raise ConfigError(
                "model.layers",
                self.model.layers,
                f"this stack keeps ~{needed:.0f} MB of activations per batch of {self.train.batch_size}; the limit "
                f"is {ACTIVATION_BUDGET_MB} MB per run: use fewer channels at full resolution, an earlier max-pool "
                "or a smaller batch",
                ("train.batch_size", "model.batch_norm", "model.dropout"),
            )

    def to_dict(self) -> dict:
        """A plain, JSON-ready dict of every field."""
        return {name: dataclasses.asdict(getattr(self, name)) for name in _SECTIONS}

    def to_json(self) -> str:
        """The config as a JSON string."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_query(self) -> str:
        """A compact URL query string holding only the fields that differ from the defaults."""
        return urlencode(self.to_query_params())

    def to_query_params(self) -> dict[str, str]:
        """The non-default fields as URL key -> text."""
        params = {}
        for section in _SECTIONS:
            value, default = getattr(self, section), getattr(RunConfig(), section)
            for f in dataclasses.fields(value):
                if getattr(value, f.name) != getattr(default, f.name):
                    params[f.metadata["key"]] = _to_text(getattr(value, f.name))
        return params

    def replace(self, **sections) -> RunConfig:
        """A copy with whole sections or single fields changed, e.g. replace(train={"epochs": 3})."""
        parts = {}
        for name in _SECTIONS:
            current = getattr(self, name)
            change = sections.pop(name, None)
            if isinstance(change, dict):
                current = section_from_dict(name, {**dataclasses.asdict(current), **change})
            elif change is not None:
                current = change
            parts[name] = current
        if sections:
            raise ConfigError(next(iter(sections)), "...", "one of the sections " + ", ".join(_SECTIONS))
        return RunConfig(**parts)

    @classmethod
    def from_dict(cls, data: Any) -> RunConfig:
        """Rebuild from to_dict() output; unknown or malformed keys raise ConfigError."""
        if not isinstance(data, dict):
            raise ConfigError("config", shorten(data), "a JSON object with the sections " + ", ".join(_SECTIONS))
        unknown = set(data) - set(_SECTIONS)
        if unknown:
            raise ConfigError(sorted(map(str, unknown))[0], "...", "only the sections " + ", ".join(_SECTIONS))
        return cls(**{name: section_from_dict(name, data.get(name, {})) for name in _SECTIONS})

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        """Rebuild from to_json() output."""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as error:
            raise ConfigError("config", shorten(text), f"valid JSON ({error})") from None
        return cls.from_dict(data)

    @classmethod
    def from_query(cls, query: str | dict[str, str]) -> RunConfig:
        """Rebuild from a URL query string (or its parsed key -> value dict); absent keys keep their defaults."""
        if isinstance(query, str):
            pairs = parse_qsl(query.lstrip("?"), keep_blank_values=True)
            keys = [k for k, _ in pairs]
            repeated = next((k for k in keys if keys.count(k) > 1), None)
            if repeated is not None:
                raise ConfigError("link", shorten(query), f"each setting at most once ({repeated!r} is given twice)")
            query = dict(pairs)
        by_key = {}
        for name, section in _SECTIONS.items():
            for f in dataclasses.fields(section):
                by_key[f.metadata["key"]] = (name, f)
        sections: dict[str, dict] = {name: {} for name in _SECTIONS}
        for key, text in query.items():
            if key not in by_key:
                raise ConfigError(f"link setting {key!r}", shorten(text), "only the keys " + ", ".join(sorted(by_key)))
            name, f = by_key[key]
            sections[name][f.name] = _from_text(f"{name}.{f.name}", text, f.metadata)
        return cls.from_dict(sections)


def section_from_dict(name: str, data: Any):
    """Build one section (model/augment/train) from a dict, rejecting unknown keys."""
    cls = _SECTIONS[name]
    if not isinstance(data, dict):
        raise ConfigError(name, shorten(data), "an object with the fields " + ", ".join(field_names(cls)))
    unknown = set(data) - set(field_names(cls))
    if unknown:
        raise ConfigError(
            f"{name}.{sorted(map(str, unknown))[0]}", "...", "only the fields " + ", ".join(field_names(cls))
        )
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            value = data[f.name]
            # JSON has one number type; accept 3.0 for an integer field but nothing fractional.
            if f.metadata.get("integer") and isinstance(value, float) and value.is_integer():
                value = int(value)
            values[f.name] = value
    return cls(**values)


def field_names(cls) -> list[str]:
    """The field names of a config section class."""
    return [f.name for f in dataclasses.fields(cls)]


def field_help(cls, name: str) -> str:
    """The help text declared for a field."""
    return next(f.metadata["help"] for f in dataclasses.fields(cls) if f.name == name)


def field_range(cls, name: str) -> tuple:
    """The (low, high) range declared for a numeric field."""
    return next(f.metadata["range"] for f in dataclasses.fields(cls) if f.name == name)


def field_choices(cls, name: str) -> tuple[str, ...]:
    """The choices declared for a field."""
    return next(f.metadata["choices"] for f in dataclasses.fields(cls) if f.name == name)


def _to_text(value: Any) -> str:
    """A field value as URL text."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _from_text(name: str, text: str, meta) -> Any:
    """Parse URL text for a field; raises ConfigError naming the field."""
    if meta.get("flag"):
        if text not in ("0", "1"):
            raise ConfigError(name, text, "1 or 0")
        return text == "1"
    if "choices" in meta or meta.get("text"):
        return text
    lo, hi = meta["range"]
    allowed = f"{'a whole number' if meta['integer'] else 'a number'} from {lo} to {hi}"
    if not text.isascii():  # int() and float() read other scripts' digits, which a number box then can't show
        raise ConfigError(name, shorten(text), f"{allowed}, written with the digits 0-9")
    try:
        return int(text) if meta["integer"] else float(text)
    except ValueError:
        raise ConfigError(name, shorten(text), allowed) from None
