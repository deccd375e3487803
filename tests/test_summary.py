"""Tests for drill.summary: the layer table, hand-worked receptive fields, totals, memoisation and torchinfo's cache."""

from __future__ import annotations

import gc
import threading
import weakref

import pytest
import torchinfo.torchinfo

from drill import summary as summary_module
from drill.config import ModelConfig
from drill.model import build_model
from drill.presets import PRESETS, get_preset
from drill.summary import LayerRow, Summary, summarize

# Receptive-field walk, per layer with kernel k, stride s, padding p (GAP / a flattened fc: k = the map side):
#   rf_out = rf_in + (k - 1) * jump_in;  jump_out = jump_in * s;  start_out = start_in + ((k - 1) / 2 - p) * jump_in
# starting from rf 1, jump 1, start 0.5 (the centre of the first input pixel).
#
# "8,16,M,T8,16,16,16" + gap_conv, no BN or dropout (map sides 28 -> 26 -> 24 -> 12 -> 12 -> 10 -> 8 -> 6):
#   conv1 3x3: rf 1 + 2*1 = 3,   jump 1, start 0.5 + 1*1 = 1.5
#   conv2 3x3: rf 3 + 2*1 = 5,   jump 1, start 1.5 + 1*1 = 2.5
#   pool1 2x2: rf 5 + 1*1 = 6,   jump 2, start 2.5 + 0.5*1 = 3.0
#   trans1 1x1: unchanged:  6,   jump 2, start 3.0
#   conv3 3x3: rf 6 + 2*2 = 10,  jump 2, start 3.0 + 1*2 = 5.0
#   conv4 3x3: rf 10 + 2*2 = 14, jump 2, start 7.0
#   conv5 3x3: rf 14 + 2*2 = 18, jump 2, start 9.0   <- what the head sees: head_rf = 18
#   GAP over 6x6: rf 18 + 5*2 = 28, jump 2, start 9.0 + 2.5*2 = 14.0 (the whole image, centred)
# Params: 1*8*9 = 72, 8*16*9 = 1,152, 16*8 = 128, 8*16*9 = 1,152, 16*16*9 = 2,304 (twice), head 16*10 = 160.
HAND_STACK = ModelConfig(layers="8,16,M,T8,16,16,16", head="gap_conv")
HAND_ROWS = [
    ("conv1.conv", "Conv2d", (8, 26, 26), 72, 3, 1, 1.5),
    ("conv1.relu", "ReLU", (8, 26, 26), 0, 3, 1, 1.5),
    ("conv2.conv", "Conv2d", (16, 24, 24), 1152, 5, 1, 2.5),
    ("conv2.relu", "ReLU", (16, 24, 24), 0, 5, 1, 2.5),
    ("pool1", "MaxPool2d", (16, 12, 12), 0, 6, 2, 3.0),
    ("trans1.conv", "Conv2d", (8, 12, 12), 128, 6, 2, 3.0),
    ("trans1.relu", "ReLU", (8, 12, 12), 0, 6, 2, 3.0),
    ("conv3.conv", "Conv2d", (16, 10, 10), 1152, 10, 2, 5.0),
    ("conv3.relu", "ReLU", (16, 10, 10), 0, 10, 2, 5.0),
    ("conv4.conv", "Conv2d", (16, 8, 8), 2304, 14, 2, 7.0),
    ("conv4.relu", "ReLU", (16, 8, 8), 0, 14, 2, 7.0),
    ("conv5.conv", "Conv2d", (16, 6, 6), 2304, 18, 2, 9.0),
    ("conv5.relu", "ReLU", (16, 6, 6), 0, 18, 2, 9.0),
    ("head.gap", "AdaptiveAvgPool2d", (16, 1, 1), 0, 28, 2, 14.0),
    ("head.conv1x1", "Conv2d", (10, 1, 1), 160, 28, 2, 14.0),
    ("head.flatten", "Flatten", (10,), 0, 28, 2, 14.0),
]

# "8p,8p,M,8" + fc (sides 28 -> 28 -> 28 -> 14 -> 12): padding 1 on a 3x3 kernel keeps the start where it was.
#   conv1 3x3 p1: rf 3, jump 1, start 0.5 + (1 - 1)*1 = 0.5
#   conv2 3x3 p1: rf 5, jump 1, start 0.5
#   pool1 2x2:    rf 6, jump 2, start 0.5 + 0.5*1 = 1.0
#   conv3 3x3:    rf 6 + 2*2 = 10, jump 2, start 1.0 + 1*2 = 3.0   <- head_rf = 10
#   flatten: pointwise; fc over the 12x12 map: rf 10 + 11*2 = 32, start 3.0 + 5.5*2 = 14.0
# Params: 72 + 8*8*9 = 576 + 576, fc 8*12*12*10 = 11,520.
PADDED_STACK = ModelConfig(layers="8p,8p,M,8", head="fc")
PADDED_ROWS = [
    ("conv1.conv", "Conv2d", (8, 28, 28), 72, 3, 1, 0.5),
    ("conv1.relu", "ReLU", (8, 28, 28), 0, 3, 1, 0.5),
    ("conv2.conv", "Conv2d", (8, 28, 28), 576, 5, 1, 0.5),
    ("conv2.relu", "ReLU", (8, 28, 28), 0, 5, 1, 0.5),
    ("pool1", "MaxPool2d", (8, 14, 14), 0, 6, 2, 1.0),
    ("conv3.conv", "Conv2d", (8, 12, 12), 576, 10, 2, 3.0),
    ("conv3.relu", "ReLU", (8, 12, 12), 0, 10, 2, 3.0),
    ("head.flatten", "Flatten", (1152,), 0, 10, 2, 3.0),
    ("head.fc", "Linear", (10,), 11520, 32, 2, 14.0),
]


def as_tuples(s: Summary) -> list[tuple]:
    return [(r.name, r.kind, r.output_shape, r.params, r.rf, r.jump, r.start) for r in s.rows]


def test_hand_worked_receptive_fields_gap_head():
    s = summarize(HAND_STACK)
    assert as_tuples(s) == HAND_ROWS
    assert s.head_rf == 18
    assert s.total_params == s.trainable_params == 72 + 1152 + 128 + 1152 + 2304 + 2304 + 160
    assert all(isinstance(r, LayerRow) for r in s.rows)


def test_hand_worked_receptive_fields_padded_stack_and_fc_head():
    s = summarize(PADDED_STACK)
    assert as_tuples(s) == PADDED_ROWS
    assert s.head_rf == 10
    assert s.total_params == 72 + 576 + 576 + 11520


@pytest.mark.parametrize(
    ("preset", "head_rf"),
    # lean "8,12,M,12,16,M": 3, 5, pool 6 (jump 2), 10, 14, pool 16.
    # final "10,10,16,M,T10,10,16,16": 3, 5, 7, pool 8 (jump 2), 8, 12, 16, 20.
    # skeleton "32p,64p,M,128,M": 3, 5, pool 6 (jump 2), 10, pool 12.
    [("lean", 16), ("batchnorm", 16), ("final", 20), ("skeleton", 12)],
)
def test_head_rf_of_presets(preset, head_rf):
    assert summarize(get_preset(preset).config.model).head_rf == head_rf


@pytest.mark.parametrize("preset", PRESETS, ids=[p.name for p in PRESETS])
def test_total_equals_the_model_parameters(preset):
    s = summarize(preset.config.model)
    model = build_model(preset.config.model)
    assert s.total_params == sum(p.numel() for p in model.parameters())
    assert s.trainable_params == s.total_params
    assert sum(r.params for r in s.rows) == s.total_params
    assert s.rows[-1].output_shape == (10,)
    assert s.mult_adds > 0 and s.memory_mb > 0


def test_rows_name_every_block_with_bn_and_dropout():
    s = summarize(get_preset("final").config.model)
    names = [r.name for r in s.rows]
    block = ["conv", "bn", "relu", "dropout"]
    expected = (
        [f"conv{i}.{part}" for i in (1, 2, 3) for part in block]
        + ["pool1"]
        + [f"trans1.{part}" for part in block]
        + [f"conv{i}.{part}" for i in (4, 5, 6) for part in block]
        + ["head.gap", "head.conv1x1", "head.flatten"]
    )
    assert names == expected
    kinds = {r.name: r.kind for r in s.rows}
    assert (kinds["conv1.bn"], kinds["conv1.dropout"], kinds["pool1"]) == ("BatchNorm2d", "Dropout", "MaxPool2d")
    assert {r.name: r.params for r in s.rows}["conv1.bn"] == 2 * 10


@pytest.mark.parametrize(
    ("head", "names", "shapes"),
    [
        ("fc", ["head.flatten", "head.fc"], [(16 * 12 * 12,), (10,)]),
        ("gap_conv", ["head.gap", "head.conv1x1", "head.flatten"], [(16, 1, 1), (10, 1, 1), (10,)]),
        ("gap_linear", ["head.gap", "head.flatten", "head.fc"], [(16, 1, 1), (16,), (10,)]),
        ("conv_gap", ["head.conv1x1", "head.gap", "head.flatten"], [(10, 12, 12), (10, 1, 1), (10,)]),
    ],
)
def test_head_rows_and_shapes(head, names, shapes):
    # "8,16,M": 28 -> 26 -> 24 -> 12; conv2's RF is 5 and the pool's 6 (jump 2), so the whole-map layer sees
    # 6 + 11*2 = 28 pixels.
    s = summarize(ModelConfig(layers="8,16,M", head=head))
    head_rows = [r for r in s.rows if r.name.startswith("head.")]
    assert [r.name for r in head_rows] == names
    assert [r.output_shape for r in head_rows] == shapes
    assert head_rows[-1].rf == 28
    assert s.head_rf == 6


def test_mult_adds_by_hand():
    # "8" + fc: the conv does 72 multiply-adds at each of 26*26 positions (48,672); the fc 8*26*26*10 (54,080).
    assert summarize(ModelConfig(layers="8", head="fc")).mult_adds == 72 * 26 * 26 + 8 * 26 * 26 * 10


def test_summarize_is_memoised():
    cfg = ModelConfig(layers="8,16,M,T8,24", head="gap_linear")
    first = summarize(cfg)
    assert summarize(cfg) is first
    assert summarize(ModelConfig(layers="8,16,M,T8,24", head="gap_linear")) is first  # equal configs share it
    assert summarize(ModelConfig(layers="8,16,M,T8,24", head="gap_conv")) is not first


def test_torchinfo_cache_is_left_empty_and_the_model_is_freed(monkeypatch):
    built = []

    def tracking_build(cfg, seed=1):
        model = build_model(cfg, seed)
        built.append(weakref.ref(model))
        return model

    monkeypatch.setattr(summary_module, "build_model", tracking_build)
    cfg = ModelConfig(layers="8,16,M,T8,20", head="conv_gap")  # a config no other test summarises
    s = summarize(cfg)
    assert len(built) == 1, "a fresh config builds one model"
    assert torchinfo.torchinfo._cached_forward_pass == {}
    gc.collect()
    assert built[0]() is None, "nothing (torchinfo's cache, hooks, the summary) keeps the model alive"
    assert s.total_params == 72 + 1152 + 128 + 8 * 20 * 9 + 20 * 10


def test_summaries_from_many_threads_agree():
    configs = [ModelConfig(layers=f"{c},16,M,T8", head="gap_conv") for c in (3, 5, 7, 9, 11, 13)]
    results: dict[int, Summary] = {}
    errors = []

    def work(index):
        try:
            results[index] = summarize(configs[index])
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(configs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    for index, c in enumerate((3, 5, 7, 9, 11, 13)):
        # conv c*9, conv c*16*9, 1x1 16*8, head 8*10.
        assert results[index].total_params == c * 9 + c * 16 * 9 + 16 * 8 + 80
        assert [r.name for r in results[index].rows][:2] == ["conv1.conv", "conv1.relu"]
    assert torchinfo.torchinfo._cached_forward_pass == {}
