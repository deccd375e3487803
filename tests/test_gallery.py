"""The write-ups' networks, rebuilt by the builder exactly: their parameter counts, their layers placed as the
write-ups place them (the same modules in the same order as a hand-written nn.Sequential), and every link the app
made before the per-layer options still opening the same model."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from drill.config import RunConfig
from drill.gallery import BY_NAME as GALLERY
from drill.gallery import NETWORKS
from drill.model import build_model, count_params
from drill.presets import BY_NAME, PRESETS
from drill.summary import summarize


@pytest.mark.parametrize("network", NETWORKS, ids=lambda n: n.name)
def test_a_write_ups_network_has_the_parameters_its_write_up_reports(network):
    assert summarize(network.config.model).total_params == count_params(build_model(network.config.model))
    assert count_params(build_model(network.config.model)) == network.params
    assert RunConfig.from_query(network.config.to_query()) == network.config  # loadable from its link


def conv(cin: int, cout: int, padding: int = 0) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=padding, bias=True)


# The write-ups' networks as a student writes them in PyTorch (seeds/004 and seeds/003).
HAND_WRITTEN = {
    "wu004-skeleton": [
        conv(1, 32, 1), nn.ReLU(), conv(32, 64, 1), nn.ReLU(), nn.MaxPool2d(2, 2),
        conv(64, 128, 1), nn.ReLU(), conv(128, 256, 1), nn.ReLU(), nn.MaxPool2d(2, 2),
        conv(256, 512), nn.ReLU(), conv(512, 1024), nn.ReLU(), conv(1024, 10), nn.Flatten(),
    ],
    "wu003-gap": [
        conv(1, 4, 1), nn.BatchNorm2d(4, affine=False), nn.ReLU(),
        conv(4, 8, 1), nn.BatchNorm2d(8, affine=False), nn.ReLU(), nn.MaxPool2d(2, 2), nn.Dropout(0.1),
        conv(8, 16, 1), nn.BatchNorm2d(16, affine=False), nn.ReLU(),
        conv(16, 32, 1), nn.BatchNorm2d(32, affine=False), nn.ReLU(), nn.MaxPool2d(2, 2), nn.Dropout(0.1),
        conv(32, 64), nn.BatchNorm2d(64, affine=False), nn.ReLU(),
        nn.Conv2d(64, 10, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    ],
}  # fmt: skip


def leaves(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if not list(m.children())]


def signature(module: nn.Module) -> tuple:
    """What makes two leaf modules the same layer: class, shape-giving settings, parameter count."""
    kind = "Dropout" if type(module).__name__ == "Dropout" else type(module).__name__
    settings = {
        name: getattr(module, name)
        for name in ("in_channels", "out_channels", "kernel_size", "padding", "affine", "num_features", "p")
        if hasattr(module, name)
    }
    return kind, tuple(sorted(settings.items())), count_params(module)


@pytest.mark.parametrize("name", list(HAND_WRITTEN))
def test_per_layer_placement_equals_the_hand_written_network(name):
    ours = build_model(GALLERY[name].config.model).eval()
    theirs = nn.Sequential(OrderedDict((str(i), m) for i, m in enumerate(HAND_WRITTEN[name]))).eval()
    assert [signature(m) for m in leaves(ours)] == [signature(m) for m in leaves(theirs)]
    # With the same weights, the same function (batch norm's running statistics are part of the state too).
    theirs.load_state_dict(dict(zip(theirs.state_dict(), ours.state_dict().values(), strict=True)))
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(torch.log_softmax(theirs(x), dim=1), ours(x))


# Every preset's link as the app made it before layers had options: each must open the very same model.
OLD_LINKS = {
    "skeleton": ("layers=32p%2C64p%2CM%2C128%2CM&bias=1", 138_762),
    "lean": ("layers=8%2C12%2CM%2C12%2C16%2CM", 6_520),
    "batchnorm": ("layers=8%2C12%2CM%2C12%2C16%2CM&bn=before_relu", 6_616),
    "regularised": ("layers=8%2C12%2CM%2C12%2C16%2CM&bn=before_relu&drop=0.05&rot=7.0", 6_616),
    "final": (
        "layers=10%2C10%2C16%2CM%2CT10%2C10%2C16%2C16&bn=before_relu&drop=0.02&head=gap_conv&rot=7.0&shift=0.05"
        "&bs=64&sched=onecycle",
        7_570,
    ),
    "stretch": (
        "layers=10%2C10%2C14%2CM%2CT10%2C10%2C14%2C14&bn=before_relu&drop=0.02&head=gap_conv&rot=7.0&shift=0.05"
        "&bs=64&sched=onecycle",
        6_618,
    ),
    "quick": (
        "layers=10%2C10%2C16%2CM%2CT10%2C10%2C16%2C16&bn=before_relu&drop=0.02&head=gap_conv&rot=7.0&ep=3&bs=64"
        "&sched=onecycle&subset=6000",
        7_570,
    ),
}


def test_every_presets_old_link_opens_the_same_model():
    assert set(OLD_LINKS) == set(BY_NAME)
    for name, (link, params) in OLD_LINKS.items():
        cfg = RunConfig.from_query(link)
        assert cfg == BY_NAME[name].config and cfg.to_query() == link, name
        assert count_params(build_model(cfg.model)) == params, name
    # The weights' names, which stored runs and the recorded-runs pack load by, are the ones they always were.
    assert list(build_model(BY_NAME["final"].config.model).state_dict())[:4] == [
        "features.conv1.conv.weight",
        "features.conv1.bn.weight",
        "features.conv1.bn.bias",
        "features.conv1.bn.running_mean",
    ]
    assert len(PRESETS) == len(OLD_LINKS)


def test_a_heavy_network_is_built_and_tabled_and_one_past_the_cap_is_refused_with_its_count():
    from drill.config import ConfigError, ModelConfig
    from drill.stack import MAX_PARAMS

    heavy = ModelConfig(layers="64p,M,256p,M,1024p,1024", head="gap_linear", hidden="512")
    summary = summarize(heavy)
    assert 10_000_000 < summary.total_params < MAX_PARAMS
    assert [row.output_shape for row in summary.rows if row.name.endswith(".conv")][-1] == (1024, 5, 5)
    assert summary.head_rf == 26 and summary.mult_adds > 0  # 3, pool 4, 8, pool 10, 18, 26
    with pytest.raises(ConfigError, match=r"this network has 2\d,\d{3},\d{3} parameters; at most 16,000,000"):
        ModelConfig(layers="64p,M,256p,M,1024p,1024,1024")
