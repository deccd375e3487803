"""ModelConfig -> nn.Module, built from small named blocks; each toggle is decided in exactly one place."""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from drill.config import ModelConfig
from drill.stack import NUM_CLASSES, Block, Head, plan

# Dense dropout masks come from 15-bit random integers, four per 64-bit draw, not one draw per element as in
# nn.Dropout's bernoulli_ (31% of the final network's training step: results/dropout-cost.json). p is honoured to
# 1/32768 and the kept values are scaled by 1 / (1 - p_effective), so the expected activation is exactly unchanged.
_MASK_LEVELS = 32768
_LOW_15_BITS = 0x7FFF_7FFF_7FFF_7FFF
# Up to this rate, element dropout draws where the drops fall instead of a mask: about n * p draws, not n / 4.
SPARSE_DROPOUT_MAX_P = 0.25


def keep_mask(shape: tuple[int, ...], p: float, generator: torch.Generator | None) -> tuple[torch.Tensor, float]:
    """A boolean mask keeping each element with probability 1 - p, and the matching scale 1 / (1 - p)."""
    count = math.prod(shape)
    bits = torch.empty((count + 3) // 4, dtype=torch.int64).random_(generator=generator)
    # random_ on int64 draws from [0, 2**63): the top lane lacks its sign bit, so clear it in every lane alike.
    bits.bitwise_and_(_LOW_15_BITS)
    threshold = round(p * _MASK_LEVELS)
    keep = bits.view(torch.int16)[:count].view(shape) >= threshold
    return keep, _MASK_LEVELS / (_MASK_LEVELS - threshold)


def drop_positions(count: int, p: float, generator: torch.Generator | None, draws: int | None = None) -> torch.Tensor:
    """Indices in [0, count) each chosen independently with probability p (a Bernoulli process, as a mask would be).

    The gaps between successive drops of a Bernoulli(p) process are Geometric(p), so drawing the gaps gives the
    same law as one draw per element with about n * p draws. `draws` per round defaults to six standard deviations
    above the expected count, so a second round is rare.
    """
    expected = count * p
    chunk = draws or int(expected + 6 * math.sqrt(expected) + 16)
    ends: list[torch.Tensor] = []
    start = 0
    while start < count:
        gaps = torch.empty(chunk, dtype=torch.float64).geometric_(p, generator=generator).to(torch.int64)
        positions = gaps.cumsum_(0).add_(start - 1)
        ends.append(positions)
        start = int(positions[-1]) + 1
    positions = torch.cat(ends)
    return positions[: int(torch.searchsorted(positions, count))]


class _SparseDropout(torch.autograd.Function):
    """x * scale with the given storage positions zeroed; backward does the same to the gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, positions: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(positions)
        ctx.scale = scale
        return _zero_at(x * scale, positions)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (positions,) = ctx.saved_tensors
        return _zero_at(grad * ctx.scale, positions), None, None


def _zero_at(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x (a fresh tensor) made contiguous and zeroed at the given flat positions, in place."""
    x = x.contiguous()
    x.view(-1).index_fill_(0, positions, 0.0)
    return x


class Dropout(nn.Module):
    """nn.Dropout (element) or nn.Dropout2d (channel) semantics, drawing masks from a per-run generator.

    A per-run generator (set by the trainer) keeps concurrent runs in one process reproducible: the global RNG
    would interleave their draws.
    """

    def __init__(self, p: float, channel: bool):
        super().__init__()
        self.p = p
        self.channel = channel
        self.generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if not self.channel and self.p <= SPARSE_DROPOUT_MAX_P:
            positions = drop_positions(x.numel(), self.p, self.generator)
            return _SparseDropout.apply(x, positions, 1 / (1 - self.p))
        keep, scale = keep_mask((*x.shape[:2], 1, 1) if self.channel else tuple(x.shape), self.p, self.generator)
        return torch.where(keep, x * scale, 0.0)

    def extra_repr(self) -> str:
        return f"p={self.p}, channel={self.channel}"


def _dropout(rate: float, kind: str) -> list[tuple[str, nn.Module]]:
    return [("dropout", Dropout(rate, channel=kind == "channel"))] if rate > 0 else []


def block_module(block: Block) -> nn.Module:
    """A conv block: conv -> ReLU, batch norm before or after the ReLU and dropout last, as the block says; a pool
    block is the pool, in a Sequential with its dropout when it has one."""
    layer = block.layer
    if layer.kind == "pool":
        pool = nn.MaxPool2d(2, 2) if layer.pool == "max" else nn.AvgPool2d(2, 2)
        dropout = _dropout(block.dropout, block.dropout_kind)
        return nn.Sequential(OrderedDict([("pool", pool), *dropout])) if dropout else pool
    conv = nn.Conv2d(block.in_channels, block.out_channels, layer.kernel, padding=layer.padding, bias=block.bias)
    parts: list[tuple[str, nn.Module]] = [("conv", conv)]
    norm = ("bn", nn.BatchNorm2d(block.out_channels, affine=layer.affine))
    if block.bn == "before_relu":
        parts.append(norm)
    if layer.relu:
        parts.append(("relu", nn.ReLU()))
    if block.bn == "after_relu":
        parts.append(norm)
    return nn.Sequential(OrderedDict(parts + _dropout(block.dropout, block.dropout_kind)))


def head_module(head: Head) -> nn.Sequential:
    """The classifier that turns the last feature map into 10 class scores."""
    gap = ("gap", nn.AdaptiveAvgPool2d(1))
    to_classes = ("conv1x1", nn.Conv2d(head.in_channels, NUM_CLASSES, 1, bias=head.bias))
    widths = (head.linear_inputs, *head.hidden)
    hidden = []
    for number, (width_in, width) in enumerate(zip(widths, widths[1:], strict=False), start=1):
        hidden += [(f"hidden{number}", nn.Linear(width_in, width, bias=head.bias)), (f"relu{number}", nn.ReLU())]
        if head.hidden_dropout > 0:
            hidden.append((f"dropout{number}", Dropout(head.hidden_dropout, channel=False)))
    fc = ("fc", nn.Linear(widths[-1], NUM_CLASSES, bias=head.bias))
    parts = {
        "fc": [("flatten", nn.Flatten()), *hidden, fc],
        "gap_conv": [gap, to_classes, ("flatten", nn.Flatten())],
        "gap_linear": [gap, ("flatten", nn.Flatten()), *hidden, fc],
        "conv_gap": [to_classes, gap, ("flatten", nn.Flatten())],
        "none": [("flatten", nn.Flatten())],
    }[head.kind]
    return nn.Sequential(OrderedDict(parts))


class Net(nn.Module):
    """The drill-down CNN: the blocks of its plan (drill.stack), named conv/trans/pool, then a head."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        built = plan(cfg)
        self.features = nn.Sequential(OrderedDict((block.name, block_module(block)) for block in built.blocks))
        self.head = head_module(built.head)
        self.input_format = torch.contiguous_format  # the memory layout its weights (and so its inputs) are in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.head(self.features(x))
        return F.log_softmax(scores, dim=1) if self.cfg.log_softmax else scores


def init_weights(model: nn.Module, generator: torch.Generator) -> None:
    """PyTorch's default conv/linear initialisation, drawn from the given generator (reproducible per run)."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
            if module.bias is not None:
                bound = 1 / math.sqrt(nn.init._calculate_fan_in_and_fan_out(module.weight)[0])
                nn.init.uniform_(module.bias, -bound, bound, generator=generator)


def set_generator(model: nn.Module, generator: torch.Generator | None) -> None:
    """Make every dropout layer of the model draw from this generator."""
    for module in model.modules():
        if isinstance(module, Dropout):
            module.generator = generator


def build_model(cfg: ModelConfig, seed: int = 1) -> Net:
    """Build the network for a config, its weights initialised from the seed."""
    model = Net(cfg)
    init_weights(model, torch.Generator().manual_seed(seed))
    return model


def inference_copy(model: Net) -> Net:
    """An eval-mode copy of the model that computes the same function faster, for the test pass and predictions.

    Each batch norm that directly follows its conv is folded into the conv's weights and bias (the same function
    up to float rounding); when none is left, the copy is channels_last, where conv, ReLU and max-pool are all
    faster on the CPU (batch norm is slower that way, so a model that keeps one stays NCHW). Its ReLUs work in
    place: nothing is kept for a backward pass, so each saves a pass over memory.
    """
    fast = Net(model.cfg)
    fast.load_state_dict(model.state_dict())
    fast.eval()
    for module in fast.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = True
    for block in fast.features:
        if isinstance(block, nn.Sequential) and list(block._modules)[:2] == ["conv", "bn"]:
            block.conv = _fold(block.conv, block.bn)
            block.bn = nn.Identity()
    if not any(isinstance(module, nn.BatchNorm2d) for module in fast.modules()):
        fast = fast.to(memory_format=torch.channels_last)
        fast.input_format = torch.channels_last
    return fast


@torch.no_grad()
def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """conv followed by eval-mode batch norm, as one conv with a bias."""
    # Without learnable scale and shift (affine=False) batch norm only standardises: scale 1, shift 0.
    scale = torch.rsqrt(bn.running_var + bn.eps) * (1 if bn.weight is None else bn.weight)
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding, bias=True)
    folded.weight.copy_(conv.weight * scale[:, None, None, None])
    shift = (0 if bn.bias is None else bn.bias) - bn.running_mean * scale
    folded.bias.copy_(shift if conv.bias is None else shift + conv.bias * scale)
    return folded.eval()


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
