"""Tests for drill.model: parameter counts, block and head structure, the seeded dropout and reproducible init."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from drill.config import ModelConfig
from drill.model import (
    SPARSE_DROPOUT_MAX_P,
    Dropout,
    block_module,
    build_model,
    count_params,
    drop_positions,
    inference_copy,
    keep_mask,
    set_generator,
)
from drill.presets import PRESETS, get_preset
from drill.stack import plan

# Computed once from the presets and pinned: a change to a preset or to how the model is built shows up here.
PRESET_PARAMS = {
    "skeleton": 138_762,
    "lean": 6_520,
    "batchnorm": 6_616,
    "regularised": 6_616,
    "final": 7_570,
    "quick": 7_570,
    "stretch": 6_618,
}

# Hand-computed counts (no bias unless stated; a 3x3 conv from a to b channels has a*b*9 weights, a 1x1 one a*b).
HAND_COUNTS = [
    # "8" + fc: conv 1*8*9 = 72; map 28 -> 26, so fc 8*26*26*10 = 54,080. 72 + 54,080 = 54,152.
    (dict(layers="8", head="fc"), 54_152),
    # "8,16,M,T8,16,16,16" + gap_conv: 72 + 8*16*9 (1,152) + 16*8 (128) + 8*16*9 (1,152) + 16*16*9 (2,304)
    # + 2,304 + head 1x1 16*10 (160) = 7,272.
    (dict(layers="8,16,M,T8,16,16,16", head="gap_conv"), 7_272),
    # The same with bias and batch norm: conv biases 8+16+8+16+16+16 = 80, head bias 10, BN weight+bias 2*80 = 160.
    # 7,272 + 80 + 10 + 160 = 7,522.
    (dict(layers="8,16,M,T8,16,16,16", head="gap_conv", bias=True, batch_norm="before_relu"), 7_522),
    # "8,16,M": convs 72 + 1,152 = 1,224; the map is 28 -> 26 -> 24 -> 12.
    # fc: 16*12*12*10 = 23,040 -> 24,264. The GAP heads and conv_gap: 16*10 = 160 -> 1,384.
    (dict(layers="8,16,M", head="fc"), 24_264),
    (dict(layers="8,16,M", head="gap_conv"), 1_384),
    (dict(layers="8,16,M", head="gap_linear"), 1_384),
    (dict(layers="8,16,M", head="conv_gap"), 1_384),
    # With bias: 8 + 16 conv biases and 10 head biases, +34.
    (dict(layers="8,16,M", head="fc", bias=True), 24_298),
    (dict(layers="8,16,M", head="gap_conv", bias=True), 1_418),
    (dict(layers="8,16,M", head="gap_linear", bias=True), 1_418),
    (dict(layers="8,16,M", head="conv_gap", bias=True), 1_418),
    # Padding keeps the map at 28: "4p" + fc = 4*9 + 4*28*28*10 = 36 + 31,360 = 31,396. Dropout adds nothing.
    (dict(layers="4p", head="fc", dropout=0.1), 31_396),
]

HEADS = ("fc", "gap_conv", "gap_linear", "conv_gap")


def images(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("preset", PRESETS, ids=[p.name for p in PRESETS])
def test_preset_parameter_counts_are_pinned(preset):
    model = build_model(preset.config.model)
    assert count_params(model) == PRESET_PARAMS[preset.name]
    assert count_params(model) == sum(p.numel() for p in model.parameters())


def test_every_preset_is_pinned():
    assert set(PRESET_PARAMS) == {p.name for p in PRESETS}


@pytest.mark.parametrize(("kwargs", "expected"), HAND_COUNTS, ids=[str(k) for k, _ in HAND_COUNTS])
def test_hand_computed_parameter_counts(kwargs, expected):
    assert count_params(build_model(ModelConfig(**kwargs))) == expected


def test_count_params_skips_frozen_parameters():
    model = build_model(ModelConfig(layers="8,16,M", head="gap_conv"))
    model.features.conv1.conv.weight.requires_grad_(False)
    assert count_params(model) == 1_384 - 72


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("log_softmax", [True, False])
def test_every_head_gives_ten_scores(head, log_softmax):
    model = build_model(ModelConfig(layers="8,16,M,T8,16", head=head, log_softmax=log_softmax)).eval()
    out = model(images(5))
    assert out.shape == (5, 10)
    assert torch.isfinite(out).all()


def test_head_structure():
    names = {
        head: [n for n, _ in build_model(ModelConfig(layers="8,M", head=head)).head.named_children()] for head in HEADS
    }
    assert names == {
        "fc": ["flatten", "fc"],
        "gap_conv": ["gap", "conv1x1", "flatten"],
        "gap_linear": ["gap", "flatten", "fc"],
        "conv_gap": ["conv1x1", "gap", "flatten"],
    }
    fc = build_model(ModelConfig(layers="8,M", head="fc")).head.fc
    assert (fc.in_features, fc.out_features) == (8 * 13 * 13, 10)


def test_gap_heads_compute_the_same_function():
    # Averaging and a 1x1 conv (or a linear layer) are both linear, so GAP -> 1x1 conv, 1x1 conv -> GAP and
    # GAP -> linear agree when they share weights: the heads differ in cost, not in what they can express.
    x = images(3)
    gap_conv = build_model(ModelConfig(layers="8,16,M", head="gap_conv", bias=True)).eval()
    conv_gap = build_model(ModelConfig(layers="8,16,M", head="conv_gap", bias=True)).eval()
    gap_linear = build_model(ModelConfig(layers="8,16,M", head="gap_linear", bias=True)).eval()
    conv_gap.load_state_dict(gap_conv.state_dict())
    state = gap_conv.state_dict()
    state["head.fc.weight"] = state.pop("head.conv1x1.weight").flatten(1)
    state["head.fc.bias"] = state.pop("head.conv1x1.bias")
    gap_linear.load_state_dict(state)
    with torch.no_grad():
        expected = gap_conv(x)
        torch.testing.assert_close(conv_gap(x), expected)
        torch.testing.assert_close(gap_linear(x), expected)


def first_block(cfg: ModelConfig) -> nn.Module:
    return block_module(plan(cfg).blocks[0])


@pytest.mark.parametrize(
    ("batch_norm", "dropout", "names"),
    [
        ("off", 0.0, ["conv", "relu"]),
        ("before_relu", 0.0, ["conv", "bn", "relu"]),
        ("after_relu", 0.0, ["conv", "relu", "bn"]),
        ("before_relu", 0.1, ["conv", "bn", "relu", "dropout"]),
        ("after_relu", 0.1, ["conv", "relu", "bn", "dropout"]),
    ],
)
def test_block_order(batch_norm, dropout, names):
    cfg = ModelConfig(layers="8,16", batch_norm=batch_norm, dropout=dropout)
    model = build_model(cfg)
    for block in (model.features.conv1, model.features.conv2):
        assert [n for n, _ in block.named_children()] == names
    block = first_block(ModelConfig(layers="4p", batch_norm=batch_norm, dropout=dropout))
    assert [type(m) for m in block] == [
        {"conv": nn.Conv2d, "bn": nn.BatchNorm2d, "relu": nn.ReLU, "dropout": Dropout}[n] for n in names
    ]


def test_batch_norm_before_relu_gives_non_negative_outputs_and_after_relu_centred_ones():
    x = images(16)
    before = first_block(ModelConfig(layers="6", batch_norm="before_relu")).train()
    after = first_block(ModelConfig(layers="6", batch_norm="after_relu")).train()
    after.load_state_dict(before.state_dict())
    with torch.no_grad():
        out_before, out_after = before(x), after(x)
    assert (out_before >= 0).all()
    assert (out_after < 0).any()
    # In training mode BN standardises each channel over the batch: mean 0, variance 1 right at its output.
    torch.testing.assert_close(out_after.mean((0, 2, 3)), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(out_after.var((0, 2, 3), unbiased=False), torch.ones(6), atol=1e-3, rtol=0)
    # And with BN before it, each ReLU output is relu(standardised), whose batch mean is about 0.4 (N(0, 1) data).
    assert ((out_before.mean((0, 2, 3)) - 0.4).abs() < 0.15).all()


def test_conv_bias_follows_the_config():
    with_bias = build_model(ModelConfig(layers="8,T4", head="fc", bias=True))
    without = build_model(ModelConfig(layers="8,T4", head="fc", bias=False))
    assert all(m.bias is not None for m in with_bias.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert all(m.bias is None for m in without.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def test_block_names_number_each_kind_separately():
    model = build_model(ModelConfig(layers="8,16,M,T8,16,M,T8,16p", head="gap_conv"))
    assert [n for n, _ in model.features.named_children()] == [
        "conv1",
        "conv2",
        "pool1",
        "trans1",
        "conv3",
        "pool2",
        "trans2",
        "conv4",
    ]
    assert model.features.trans1.conv.kernel_size == (1, 1)
    assert model.features.conv4.conv.padding == (1, 1)
    assert isinstance(model.features.pool2, nn.MaxPool2d)


# ---------------------------------------------------------------------------------------------------------------
# Dropout
# ---------------------------------------------------------------------------------------------------------------


def dropout(p: float, channel: bool = False, seed: int = 0) -> Dropout:
    module = Dropout(p, channel=channel).train()
    module.generator = torch.Generator().manual_seed(seed)
    return module


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_element_dropout_drops_a_fraction_p_and_keeps_the_mean(p):
    x = torch.ones(1_000_003)  # odd length: the last 64-bit draw is only partly used
    out = dropout(p)(x)
    dropped = (out == 0).double().mean().item()
    # The standard error of the fraction is sqrt(p(1-p)/n) <= 0.0005; 0.005 is ten of them.
    assert abs(dropped - p) < 0.005
    kept = out[out != 0]
    assert torch.allclose(kept, torch.full_like(kept, 1 / (1 - p)), rtol=1e-3)
    assert abs(out.mean().item() - 1.0) < 0.01
    # Each of the four 15-bit lanes drawn from one 64-bit integer drops at the same rate (the top lane too).
    for lane in range(4):
        assert abs((out[lane::4] == 0).double().mean().item() - p) < 0.01, lane


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_channel_dropout_zeroes_whole_channels_at_rate_p(p):
    x = torch.rand(400, 250, 3, 3) + 0.5  # no zeros of its own
    out = dropout(p, channel=True)(x)
    zero = out == 0
    per_channel = zero.flatten(2)
    assert (per_channel.all(2) | ~per_channel.any(2)).all(), "a channel is either dropped whole or kept whole"
    assert abs(per_channel.all(2).double().mean().item() - p) < 0.01  # 100,000 channels: s.e. <= 0.0016
    kept = ~zero
    torch.testing.assert_close(out[kept], x[kept] / (1 - p), rtol=1e-3, atol=0)


def test_element_dropout_does_not_drop_whole_channels():
    out = dropout(0.5)(torch.ones(8, 16, 6, 6))
    per_channel = (out == 0).flatten(2)
    assert per_channel.any(2).all() and not per_channel.all(2).all()


@pytest.mark.parametrize("draws", [None, 7])  # 7 draws a round: many rounds, so their seams are tested too
def test_drop_positions_are_a_bernoulli_process(draws):
    generator = torch.Generator().manual_seed(3)
    count, p, trials = 5_000, 0.02, 200
    hits = torch.zeros(count)
    for _ in range(trials):
        positions = drop_positions(count, p, generator, draws)
        assert positions.dtype == torch.int64
        assert (positions.diff() > 0).all() and positions.min() >= 0 and positions.max() < count
        hits[positions] += 1
    # 1,000,000 Bernoulli trials: the overall rate within 5 standard errors (0.0007) of p
    assert abs(hits.sum().item() / (count * trials) - p) < 0.0007
    # No position is favoured: the first and last tenth drop at the same rate as the rest (s.e. 0.0006 each)
    tenth = count // 10
    for part in (hits[:tenth], hits[-tenth:]):
        assert abs(part.mean().item() / trials - p) < 0.003


def test_sparse_dropout_scales_the_gradient_exactly_where_it_keeps():
    p = 0.1
    assert p <= SPARSE_DROPOUT_MAX_P  # this rate takes the sparse path
    x = (torch.rand(16, 10, 12, 12) + 0.5).requires_grad_()
    out = dropout(p)(x)
    upstream = torch.randn_like(out)
    out.backward(upstream)
    kept = out != 0
    torch.testing.assert_close(out[kept], x.detach()[kept] / (1 - p))
    torch.testing.assert_close(x.grad, torch.where(kept, upstream / (1 - p), 0.0))
    # A channels_last input gets the same law and the same exact gradient
    x_cl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    out_cl = dropout(p)(x_cl)
    out_cl.backward(upstream)
    torch.testing.assert_close(x_cl.grad, torch.where(out_cl != 0, upstream / (1 - p), 0.0))


def test_keep_mask_scale_is_exact_for_the_quantised_rate():
    keep, scale = keep_mask((10, 20), 0.1, torch.Generator().manual_seed(0))
    assert keep.shape == (10, 20) and keep.dtype == torch.bool
    threshold = round(0.1 * 32768)
    assert scale == 32768 / (32768 - threshold)


def test_dropout_is_identity_in_eval_mode_and_at_p_zero():
    x = torch.randn(4, 8, 5, 5)
    for module in (dropout(0.5).eval(), dropout(0.5, channel=True).eval(), dropout(0.0)):
        assert torch.equal(module(x), x)
    model = build_model(ModelConfig(layers="8,16,M", head="gap_conv", dropout=0.5)).eval()
    assert torch.equal(model(images()), model(images()))


def test_same_generator_seed_gives_the_same_mask_and_others_differ():
    x = torch.ones(64, 32, 4, 4)
    for channel in (False, True):
        a = dropout(0.3, channel, seed=7)(x)
        b = dropout(0.3, channel, seed=7)(x)
        c = dropout(0.3, channel, seed=8)(x)
        assert torch.equal(a, b)
        assert not torch.equal(a, c)
    # Successive calls draw fresh masks from the same generator.
    module = dropout(0.3, seed=7)
    assert not torch.equal(module(x), module(x))


def test_set_generator_reaches_every_dropout_layer():
    model = build_model(ModelConfig(layers="8,16,M,T8", head="gap_conv", dropout=0.2, dropout_kind="channel"))
    layers = [m for m in model.modules() if isinstance(m, Dropout)]
    assert len(layers) == 3 and all(m.channel and m.p == 0.2 and m.generator is None for m in layers)
    generator = torch.Generator()
    set_generator(model, generator)
    assert all(m.generator is generator for m in layers)
    model.train()
    runs = []
    for _ in range(2):
        generator.manual_seed(3)
        runs.append(model(images()))
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------------
# Initialisation and output
# ---------------------------------------------------------------------------------------------------------------


def test_build_model_is_reproducible_per_seed_and_ignores_the_global_rng():
    cfg = get_preset("final").config.model
    torch.manual_seed(123)
    a = build_model(cfg, seed=5).state_dict()
    torch.manual_seed(456)
    b = build_model(cfg, seed=5).state_dict()
    c = build_model(cfg, seed=6).state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    weights = [k for k in a if k.endswith("conv.weight")]
    assert weights and all(not torch.equal(a[k], c[k]) for k in weights)


def test_init_matches_pytorch_default_bounds():
    # kaiming_uniform_(a=sqrt(5)) gives weights and biases in +-1/sqrt(fan_in).
    model = build_model(ModelConfig(layers="16,M,32", head="fc", bias=True), seed=3)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            bound = 1 / (module.weight[0].numel() ** 0.5)
            assert module.weight.abs().max() <= bound + 1e-6
            assert module.weight.abs().max() > 0.9 * bound  # spread over the whole range
            assert module.bias.abs().max() <= bound + 1e-6


@pytest.mark.parametrize("preset", PRESETS, ids=[p.name for p in PRESETS])
def test_log_softmax_output_is_a_distribution(preset):
    model = build_model(preset.config.model).eval()
    with torch.no_grad():
        out = model(images(6))
    assert preset.config.model.log_softmax
    assert (out <= 0).all()
    torch.testing.assert_close(out.exp().sum(1), torch.ones(6))


def test_without_log_softmax_the_output_is_raw_logits():
    cfg = ModelConfig(layers="8,16,M", head="gap_conv", log_softmax=False)
    logits_model = build_model(cfg).eval()
    log_probs_model = build_model(ModelConfig(layers="8,16,M", head="gap_conv", log_softmax=True)).eval()
    with torch.no_grad():
        logits, log_probs = logits_model(images()), log_probs_model(images())
    torch.testing.assert_close(logits.log_softmax(1), log_probs)
    assert not torch.allclose(logits.exp().sum(1), torch.ones(4))


@pytest.mark.parametrize("batch_norm", ["off", "before_relu", "after_relu"])
@pytest.mark.parametrize("head", ["fc", "gap_conv", "gap_linear", "conv_gap"])
def test_the_inference_copy_computes_the_same_function(batch_norm, head):
    cfg = ModelConfig(layers="8,12p,M,T8,12,16", head=head, batch_norm=batch_norm, dropout=0.1, bias=True)
    model = build_model(cfg, seed=3)
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():  # trained-looking statistics, so folding has something to fold
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1, generator=generator)
            module.running_var.uniform_(0.5, 2, generator=generator)
            module.weight.data.uniform_(0.5, 1.5, generator=generator)
            module.bias.data.uniform_(-0.5, 0.5, generator=generator)
    model.train()  # the original stays as it was: training mode, its batch norms in place
    fast = inference_copy(model)
    assert model.training and not fast.training
    x = images()
    with torch.no_grad():
        expected = model.eval()(x)
        got = fast(x.contiguous(memory_format=fast.input_format))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    remaining = sum(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    # Batch norm right after its conv is folded away; after the ReLU it stays, and then so does the NCHW layout.
    assert remaining == (5 if batch_norm == "after_relu" else 0)  # five convs, the transition included
    assert (fast.input_format == torch.channels_last) == (batch_norm != "after_relu")
    pairs = zip(model.modules(), fast.modules(), strict=True)  # folding swaps modules in place, one for one
    relus = [(m.inplace, f.inplace) for m, f in pairs if isinstance(m, nn.ReLU)]
    assert relus and all(not trained and fast_one for trained, fast_one in relus)  # the trained model is untouched
