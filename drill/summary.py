"""torchinfo -> the layer table: per leaf layer its output shape, parameters and receptive field; plus totals."""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass

import torchinfo
import torchinfo.torchinfo
from torch import nn

from drill.config import ModelConfig
from drill.model import build_model, count_params
from drill.stack import IMAGE_SIZE


@dataclass(frozen=True)
class LayerRow:
    """One leaf layer of the table."""

    name: str  # dotted module path, e.g. "conv2.bn"
    kind: str  # module class, e.g. "Conv2d"
    output_shape: tuple[int, ...]  # without the batch dimension
    params: int
    rf: int  # receptive field: side, in input pixels, of the input window one output value sees
    jump: int  # input pixels between neighbouring output values
    start: float  # input coordinate of the centre of the first output value's window

    def as_dict(self) -> dict:
        """The row as JSON-ready data (the CLI's --json layer format)."""
        return {
            "name": self.name,
            "type": self.kind,
            "output_shape": list(self.output_shape),
            "params": self.params,
            "rf": self.rf,
            "jump": self.jump,
            "start": self.start,
        }


@dataclass(frozen=True)
class Summary:
    """The layer table and its totals."""

    rows: tuple[LayerRow, ...]
    total_params: int
    trainable_params: int
    mult_adds: int  # per image
    memory_mb: float  # torchinfo's estimate for one image: input + forward/backward activations + parameters

    @property
    def head_rf(self) -> int:
        """Receptive field of the last layer that still has a spatial map (what the head sees)."""
        # The last feature layer: the head's GAP or fully connected layer always "sees" the whole map.
        return next(row.rf for row in reversed(self.rows) if not row.name.startswith("head."))


# torchinfo keeps a module-global cache of forward passes and hooks the model it runs; one summary at a time keeps
# thirty sessions clicking toggles from interleaving in it.
_LOCK = threading.Lock()


@functools.lru_cache(maxsize=256)
def summarize(cfg: ModelConfig) -> Summary:
    """The layer table for a model config (memoised: a class clicking the same toggles shares the work)."""
    model = build_model(cfg)
    with _LOCK:
        try:
            stats = torchinfo.summary(model, input_size=(1, 1, IMAGE_SIZE, IMAGE_SIZE), verbose=0, device="cpu")
        finally:
            torchinfo.torchinfo.clear_cached_forward_pass()
    leaves = [info for info in stats.summary_list if info.is_leaf_layer]
    rows = tuple(_with_receptive_fields(leaves))
    total = count_params(model)
    assert stats.total_params == total, (stats.total_params, total)
    memory = stats.total_input + stats.total_output_bytes + stats.total_param_bytes
    return Summary(rows, total, stats.trainable_params, stats.total_mult_adds, memory / 2**20)


def _with_receptive_fields(leaves) -> list[LayerRow]:
    """Walk the leaf layers in execution order, carrying receptive field, jump and start along."""
    rf, jump, start, size = 1, 1, 0.5, IMAGE_SIZE
    rows = []
    for info in leaves:
        module = info.module
        kernel, stride, padding = _window(module, size)
        rf += (kernel - 1) * jump
        start += ((kernel - 1) / 2 - padding) * jump
        jump *= stride
        shape = tuple(int(d) for d in info.output_size[1:])
        if len(shape) == 3:
            size = shape[-1]
        elif kernel > 1:
            size = 1
        name = _dotted_name(info)
        rows.append(LayerRow(name, info.class_name, shape, int(info.num_params), rf, jump, start))
    return rows


def _window(module: nn.Module, size: int) -> tuple[int, int, int]:
    """(kernel, stride, padding) of a layer as seen by the receptive-field walk; (1, 1, 0) for pointwise layers."""
    if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        pair = lambda v: v[0] if isinstance(v, tuple) else v  # noqa: E731
        return pair(module.kernel_size), pair(module.stride), pair(module.padding)
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.Linear)) and size > 1:
        # Global pooling and a fully connected layer over a flattened map both see the whole map at once.
        return size, 1, 0
    return 1, 1, 0


def _dotted_name(info) -> str:
    """The module's path in the model, e.g. features.conv2.bn -> conv2.bn."""
    parts = []
    while info is not None and info.depth > 0:
        parts.append(info.var_name)
        info = info.parent_info
    parts.reverse()
    if parts and parts[0] == "features":
        parts = parts[1:]
    return ".".join(parts)
