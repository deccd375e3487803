"""Networks of the seed write-ups (../shared/seeds/) that the builder reconstructs exactly, layer for layer and
parameter for parameter: loadable into the builder beside the lesson's own steps, each with what its write-up
reports. Only the network is the write-up's where it gives nothing else; the notes say what was filled in."""

from __future__ import annotations

from dataclasses import dataclass

from drill.config import AugmentConfig, ModelConfig, RunConfig, TrainConfig


@dataclass(frozen=True)
class Network:
    """One write-up's network."""

    name: str  # short id, for the CLI and links
    title: str
    source: str  # the write-up it comes from
    config: RunConfig
    params: int  # the parameter count the write-up reports
    reported: str  # the result the write-up reports
    notes: str  # what the write-up does not say, and what stands in for it here


# A functional batch norm (no learnable scale or shift), before the ReLU, on every 3x3 conv of write-up 003.
_FN = ":bn=before:affine=0"
_SGD_20 = TrainConfig(epochs=20, batch_size=128, optimizer="sgd", lr=0.01, momentum=0.9)

NETWORKS: tuple[Network, ...] = (
    Network(
        "wu004-skeleton",
        "Write-up 004: the 6.4M-parameter skeleton",
        "seeds/004 (Coding_Drill_Down_MNIST, MNIST_Basic_Setup)",
        RunConfig(
            ModelConfig(layers="32p,64p,M,128p,256p,M,512,1024,10:relu=0", head="none", bias=True),
            AugmentConfig(),
            TrainConfig(epochs=15, batch_size=128, optimizer="sgd", lr=0.01, momentum=0.9),
        ),
        6_379_786,
        "train 99.93%, test 99.28%; heavily overfitting",
        "3x3 convs with bias: 1->32, 32->64 (padded), max-pool, 64->128, 128->256 (padded), max-pool, 256->512, "
        "512->1024, then 1024->10 making a 1x1x10 output with no ReLU after it; no batch norm. Training settings "
        "are not in the write-up: SGD at 0.01 with momentum 0.9 over batches of 128 for 15 epochs stand in.",
    ),
    Network(
        "wu003-gap",
        "Write-up 003: functional batch norm and GAP, 25,290 parameters",
        "seeds/003",
        RunConfig(
            ModelConfig(
                layers=f"4p{_FN},8p{_FN},M:drop=0.1,16p{_FN},32p{_FN},M:drop=0.1,64{_FN}",
                head="conv_gap",
                bias=True,
            ),
            AugmentConfig(),
            _SGD_20,
        ),
        25_290,
        "best test 98.64% (epoch 19 of 20); the write-up's target was 99.4%",
        "3x3 convs with bias 1->4, 4->8 (padded), max-pool, 8->16, 16->32 (padded), max-pool, 32->64 (7x7 -> 5x5), a "
        "1x1 conv 64->10 and an average pool of 5 (GAP on the 5x5 map). Batch norm without learnable parameters "
        "after each 3x3 conv, not after the 1x1; dropout after the two max-pools only. The write-up gives neither "
        "the dropout rate (0.1 here) nor whether batch norm comes before or after the ReLU (before, here); its 469 "
        "batches an epoch are batches of 128, and SGD at 0.01 with momentum 0.9 stands in for its optimizer.",
    ),
)
BY_NAME = {network.name: network for network in NETWORKS}


def matching(cfg: RunConfig) -> Network | None:
    """The write-up network this config is (seed and threads aside), if any."""
    same = {"seed": cfg.train.seed, "threads": cfg.train.threads}
    return next((network for network in NETWORKS if network.config.replace(train=same) == cfg), None)
