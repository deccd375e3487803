"""The layer stack: its compact text, and the block plan derived from a model config that the network, the layer
table, the exported script and the Build page's stack editor all read.

A layer is written compactly, so a stack fits a URL and a text box:
    "8"    3x3 conv to 8 channels, no padding (28 -> 26)      "8p"   the same, padded (size kept)
    "T8"   1x1 transition conv to 8 channels                    "M"    2x2 max-pool      "A"  2x2 average pool
and may carry options after colons, each overriding the model's toggle for that layer alone:
    "16p:bn=after"  "64:bn=before:affine=0"  "10:relu=0"  "32:k=5"  "M:drop=0.1:dk=channel"  "8:bias=1"
A stack without options reads as it always has, so every link made before opens the same model.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, replace
from typing import Any

from drill.errors import ConfigError, shorten

IMAGE_SIZE = 28
NUM_CLASSES = 10
MAX_LAYERS = 16
MAX_CHANNELS = 1024
MAX_PARAMS = 16_000_000  # past the write-ups' heaviest skeleton (6.4M): built and tabled, if not trained, here
MAX_HIDDEN = 1024  # widest hidden layer of a fully connected head
MAX_HIDDEN_LAYERS = 3
KERNELS = (1, 3, 5, 7)
BN_MODES = ("off", "before_relu", "after_relu")
DROPOUT_KINDS = ("element", "channel")
MAX_DROPOUT = 0.5
LAYER_SYNTAX = (
    "N (3x3 conv to N channels), Np (padded), TN (1x1 conv), M (2x2 max-pool), A (2x2 average pool), each "
    "optionally followed by :k=5 or :k=7 (kernel), :bias=0/1, :bn=off/before/after, :affine=0 (batch norm without "
    "learnable scale and shift), :relu=0, :drop=RATE (0 to 0.5), :dk=element/channel"
)
SHORT_SYNTAX = (
    "write N (3x3 conv to N channels), Np (padded), TN (1x1 conv), M (2x2 max-pool) or A (2x2 average pool), each "
    "with optional :key=value options (see Compact stack's help)"
)
# ASCII only: \d would also match fullwidth and Arabic-Indic digits, which int() reads but the compact text field
# then shows as boxes.
_BASE = re.compile(r"^(?:(?P<pool>[MA])|(?P<trans>T)(?P<tch>\d+)|(?P<ch>\d+)(?P<pad>p?))$", re.ASCII)
_BN_WORDS = {"off": "off", "before": "before_relu", "after": "after_relu"}
_POOL_OPTIONS = ("drop", "dk")
_CONV_OPTIONS = ("k", "bias", "bn", "affine", "relu", "drop", "dk")


@dataclass(frozen=True)
class Layer:
    """One layer of the stack as written: a conv or a 2x2 pool. None means "as the model's toggle says"."""

    kind: str  # "conv" or "pool"
    channels: int = 0  # conv output channels; 0 for a pool
    kernel: int = 3  # 1, 3, 5 or 7 for a conv; 2 for a pool
    padding: int = 0  # 0, or kernel // 2 (the size kept)
    pool: str = "max"  # "max" or "avg"
    bias: bool | None = None
    bn: str | None = None  # one of BN_MODES
    affine: bool = True  # batch norm with learnable scale and shift (False: the write-ups' "functional" BN)
    relu: bool = True
    dropout: float | None = None  # convs default to the model's Dropout rate; pools to none
    dropout_kind: str | None = None

    @property
    def token(self) -> str:
        """This layer in the compact stack syntax, its options in a fixed order."""
        if self.kind == "pool":
            base = "M" if self.pool == "max" else "A"
        elif self.kernel == 1:
            base = f"T{self.channels}"
        else:
            base = f"{self.channels}{'p' if self.padding else ''}"
        options = []
        if self.kind == "conv" and self.kernel not in (1, 3):
            options.append(f"k={self.kernel}")
        if self.bias is not None:
            options.append(f"bias={int(self.bias)}")
        if self.bn is not None:
            options.append("bn=" + next(word for word, mode in _BN_WORDS.items() if mode == self.bn))
        if not self.affine:
            options.append("affine=0")
        if not self.relu:
            options.append("relu=0")
        if self.dropout is not None:
            options.append(f"drop={self.dropout:g}")
        if self.dropout_kind is not None:
            options.append(f"dk={self.dropout_kind}")
        return ":".join([base, *options])

    @property
    def label(self) -> str:
        """A human description, for error messages and tables."""
        if self.kind == "pool":
            return f"2x2 {'max-pool' if self.pool == 'max' else 'average pool'}"
        if self.kernel == 1:
            return f"1x1 transition conv to {self.channels} channels"
        return f"{self.kernel}x{self.kernel} conv to {self.channels} channels{' (padded)' if self.padding else ''}"


def parse_layers(spec: str) -> tuple[Layer, ...]:
    """Parse a compact stack such as "8,16,M,T8,16p:bn=after" (commas or spaces between layers)."""
    tokens = [t for t in re.split(r"[\s,]+", spec.strip()) if t]
    if not tokens:
        raise ConfigError("model.layers", spec, f"at least one layer, written as {LAYER_SYNTAX}")
    if len(tokens) > MAX_LAYERS:
        raise ConfigError("model.layers", spec, f"at most {MAX_LAYERS} layers (this stack has {len(tokens)})")
    layers = tuple(_parse_token(spec, position, token) for position, token in enumerate(tokens, start=1))
    if not any(layer.kind == "conv" for layer in layers):
        raise ConfigError("model.layers", spec, "at least one convolution; pools alone learn nothing")
    return layers


def _parse_token(spec: str, position: int, token: str) -> Layer:
    """One layer's token; a bad one raises ConfigError naming the layer and what is allowed."""
    where = f"layer {position} ({shorten(repr(token))})"

    def refuse(allowed: str) -> ConfigError:
        return ConfigError("model.layers", spec, f"{where} {allowed}")

    if not token.isascii():
        raise refuse("has characters other than plain letters and the digits 0-9: " + SHORT_SYNTAX)
    base, *options = token.split(":")
    match = _BASE.match(base)
    if not match:
        raise refuse(f"is not a layer: {SHORT_SYNTAX}")
    if match["pool"]:
        layer = Layer("pool", 0, 2, 0, "max" if match["pool"] == "M" else "avg")
    else:
        digits = match["tch"] or match["ch"]
        # Past 5 digits the count is over the cap anyway (and int() refuses strings of over 4,300 digits).
        channels = int(digits) if len(digits) <= 5 else MAX_CHANNELS + 1
        if not 1 <= channels <= MAX_CHANNELS:
            raise refuse(f"needs 1 to {MAX_CHANNELS:,} output channels")
        layer = Layer("conv", channels, 1 if match["trans"] else 3, 1 if match["pad"] else 0)
    allowed = _POOL_OPTIONS if layer.kind == "pool" else _CONV_OPTIONS
    seen = set()
    for option in options:
        key, _, value = option.partition("=")
        if key not in allowed:
            listed = ", ".join(f":{name}=" for name in allowed)
            raise refuse(f"has the option {shorten(repr(option))}; a {layer.kind} takes {listed}")
        if key in seen:
            raise refuse(f"gives :{key}= twice; give each option once")
        seen.add(key)
        layer = _with_option(layer, key, value, refuse)
    return layer


def _with_option(layer: Layer, key: str, value: str, refuse) -> Layer:
    """The layer with one :key=value option applied."""
    flags = {"0": False, "1": True}
    if key == "k":
        if layer.kernel == 1 or value not in {str(k) for k in KERNELS}:
            raise refuse(f"has k={shorten(value)}; a conv's kernel is k=1, 3, 5 or 7 (and TN is already 1x1)")
        kernel = int(value)
        return replace(layer, kernel=kernel, padding=kernel // 2 if layer.padding else 0)
    if key in ("bias", "affine", "relu"):
        if value not in flags:
            raise refuse(f"has {key}={shorten(value)}; {key}= takes 1 (on) or 0 (off)")
        return replace(layer, **{key: flags[value]})
    if key == "bn":
        if value not in _BN_WORDS:
            raise refuse(f"has bn={shorten(value)}; bn= takes off, before or after (the ReLU)")
        return replace(layer, bn=_BN_WORDS[value])
    if key == "dk":
        if value not in DROPOUT_KINDS:
            raise refuse(f"has dk={shorten(value)}; dk= takes element or channel")
        return replace(layer, dropout_kind=value)
    try:
        rate = float(value)
    except ValueError:
        rate = math.nan
    if not 0 <= rate <= MAX_DROPOUT:
        raise refuse(f"has drop={shorten(value)}; drop= takes a rate from 0 to {MAX_DROPOUT}")
    return replace(layer, dropout=rate)


def format_layers(layers: tuple[Layer, ...]) -> str:
    """The compact stack string for a tuple of layers."""
    return ",".join(layer.token for layer in layers)


def without(spec: str, *fields: str) -> str:
    """The stack with these per-layer overrides (Layer field names) dropped, so the model's toggle sets every row:
    flipping Batch norm on the page is still one click for the whole network."""
    defaults = {name: Layer.__dataclass_fields__[name].default for name in fields}
    layers = parse_layers(spec)
    kept = tuple(replace(layer, **defaults) for layer in layers)
    return spec if kept == layers else format_layers(kept)


# Which of a layer's own settings each model toggle sets on every row.
TOGGLED = {"batch_norm": ("bn",), "dropout": ("dropout",), "dropout_kind": ("dropout_kind",), "bias": ("bias",)}


def follow_toggles(model: Any, changes: dict) -> dict:
    """Changes to a model config, with the layers' own settings of every toggle that changes dropped, so the toggle
    sets every row (adding batch norm everywhere stays one click). A stack that does not parse is left as it is:
    its error comes from the config."""
    fields = [
        name
        for toggle, names in TOGGLED.items()
        if changes.get(toggle, getattr(model, toggle)) != getattr(model, toggle)
        for name in names
    ]
    if not fields:
        return changes
    try:
        return changes | {"layers": without(changes.get("layers", model.layers), *fields)}
    except ConfigError:
        return changes


# -- the block plan ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Block:
    """One block of the network as built: a layer with the model's toggles applied, and its sizes."""

    name: str  # conv1, trans2, pool1: its name in the model, the layer table and the script
    layer: Layer
    in_channels: int
    out_channels: int
    in_size: int
    out_size: int
    bias: bool
    bn: str
    dropout: float
    dropout_kind: str

    @property
    def params(self) -> int:
        """Trainable parameters of the block."""
        if self.layer.kind == "pool":
            return 0
        k = self.layer.kernel
        weights = self.in_channels * self.out_channels * k * k + (self.out_channels if self.bias else 0)
        return weights + (2 * self.out_channels if self.bn != "off" and self.layer.affine else 0)

    @property
    def kept_elements(self) -> int:
        """Activation values per image that training keeps for backward: each conv output and its BN/ReLU/dropout
        copies (a pool keeps its output)."""
        copies = 1 + self.layer.relu + (self.bn != "off") + (self.dropout > 0) if self.layer.kind == "conv" else 1
        return self.out_channels * self.out_size * self.out_size * copies


@dataclass(frozen=True)
class Head:
    """The classifier after the blocks."""

    kind: str  # fc, gap_conv, gap_linear, conv_gap or none
    in_channels: int
    size: int
    hidden: tuple[int, ...]
    hidden_dropout: float
    bias: bool

    @property
    def linear_inputs(self) -> int:
        """Inputs of the head's first linear layer (fc: the whole flattened map; gap_linear: one per channel)."""
        return self.in_channels * (self.size * self.size if self.kind == "fc" else 1)

    @property
    def params(self) -> int:
        if self.kind in ("gap_conv", "conv_gap"):
            return self.in_channels * NUM_CLASSES + (NUM_CLASSES if self.bias else 0)
        if self.kind == "none":
            return 0
        widths = (self.linear_inputs, *self.hidden, NUM_CLASSES)
        return sum(a * b + (b if self.bias else 0) for a, b in zip(widths, widths[1:], strict=False))


@dataclass(frozen=True)
class Plan:
    """The network a model config describes, block by block."""

    blocks: tuple[Block, ...]
    head: Head

    @property
    def params(self) -> int:
        return sum(block.params for block in self.blocks) + self.head.params

    def activation_mb(self, batch_size: int) -> float:
        """Rough activation memory kept for backward per batch."""
        return sum(block.kept_elements for block in self.blocks) * batch_size * 4 / 2**20


def parse_hidden(text: str) -> tuple[int, ...]:
    """A fully connected head's hidden widths, e.g. "128,64"; raises ConfigError saying what is allowed."""
    tokens = [t for t in re.split(r"[\s,]+", text.strip()) if t]
    allowed = f"up to {MAX_HIDDEN_LAYERS} widths from 1 to {MAX_HIDDEN:,}, e.g. 64 or 128,64 (empty: none)"
    if len(tokens) > MAX_HIDDEN_LAYERS or not all(t.isascii() and t.isdigit() and len(t) <= 5 for t in tokens):
        raise ConfigError("model.hidden", text, allowed)
    widths = tuple(int(t) for t in tokens)
    if not all(1 <= width <= MAX_HIDDEN for width in widths):
        raise ConfigError("model.hidden", text, allowed)
    return widths


def settings(layer: Layer, model: Any) -> dict:
    """A layer's bias, batch norm and dropout: its own where it gives them, else the model's toggles (a pool has
    no batch norm, and dropout only where it says so)."""
    conv = layer.kind == "conv"
    return {
        "bias": model.bias if layer.bias is None else layer.bias,
        "bn": (model.batch_norm if layer.bn is None else layer.bn) if conv else "off",
        "dropout": (model.dropout if conv else 0.0) if layer.dropout is None else layer.dropout,
        "dropout_kind": model.dropout_kind if layer.dropout_kind is None else layer.dropout_kind,
    }


@functools.lru_cache(maxsize=1024)
def plan(model: Any) -> Plan:
    """The block plan of a ModelConfig (hashable and frozen); raises ConfigError for a network that can't be built."""
    layers = parse_layers(model.layers)
    blocks, counts, channels, size = [], {"conv": 0, "trans": 0, "pool": 0}, 1, IMAGE_SIZE
    for position, layer in enumerate(layers, start=1):
        out_size = size // 2 if layer.kind == "pool" else size + 2 * layer.padding - layer.kernel + 1
        if out_size < 1:
            fix = "remove a pool before it" if layer.kind == "pool" else "give an earlier conv padding (Np)"
            raise ConfigError(
                "model.layers",
                format_layers(layers),
                f"after layer {position} ({layer.label}) the feature map would shrink from {size}x{size} below 1x1; "
                f"{fix} or use one pool fewer",
            )
        name = "pool" if layer.kind == "pool" else ("trans" if layer.kernel == 1 else "conv")
        counts[name] += 1
        out_channels = channels if layer.kind == "pool" else layer.channels
        blocks.append(
            Block(f"{name}{counts[name]}", layer, channels, out_channels, size, out_size, **settings(layer, model))
        )
        channels, size = out_channels, out_size
    hidden = parse_hidden(model.hidden)
    head = Head(model.head, channels, size, hidden, model.hidden_dropout, model.bias)
    _check_head(head)
    built = Plan(tuple(blocks), head)
    if built.params > MAX_PARAMS:
        raise ConfigError(
            "model.layers",
            model.layers,
            f"this network has {built.params:,} parameters; at most {MAX_PARAMS:,} can be built here: use fewer "
            "channels or an earlier pool",
        )
    return built


def _check_head(head: Head) -> None:
    if head.hidden and head.kind not in ("fc", "gap_linear"):
        raise ConfigError(
            "model.hidden",
            ",".join(map(str, head.hidden)),
            "hidden widths only in a linear head (fc or gap_linear); this head has none",
            ("model.head",),
        )
    if head.kind == "none" and (head.in_channels, head.size) != (NUM_CLASSES, 1):
        raise ConfigError(
            "model.head",
            head.kind,
            f"a stack that ends with {NUM_CLASSES} channels at 1x1 (the last conv makes the 10 outputs); this one "
            f"ends with {head.in_channels} at {head.size}x{head.size}: end the stack with a conv to 10 channels "
            "that shrinks the map to 1x1, or pick another head",
            ("model.layers",),
        )
