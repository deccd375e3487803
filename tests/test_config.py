"""Tests for drill.config: every validation error path and lossless dict / JSON / URL round trips."""

from __future__ import annotations

import dataclasses
import json
import math
import random

import pytest

from drill.config import (
    ACTIVATION_BUDGET_MB,
    TRAIN_SIZE,
    AugmentConfig,
    ConfigError,
    ModelConfig,
    RunConfig,
    TrainConfig,
)
from drill.presets import PRESETS
from drill.stack import MAX_CHANNELS, MAX_LAYERS, Layer, format_layers, parse_layers, plan

SECTIONS = {"model": ModelConfig, "augment": AugmentConfig, "train": TrainConfig}
ALL_FIELDS = [(section, cls, f) for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)]
NUMERIC = [(s, c, f) for s, c, f in ALL_FIELDS if "range" in f.metadata]
INTEGER = [(s, c, f) for s, c, f in NUMERIC if f.metadata["integer"]]
FLOAT = [(s, c, f) for s, c, f in NUMERIC if not f.metadata["integer"]]
CHOICE = [(s, c, f) for s, c, f in ALL_FIELDS if "choices" in f.metadata]
FLAG = [(s, c, f) for s, c, f in ALL_FIELDS if f.metadata.get("flag")]


def ids(fields):
    return [f"{s}.{f.name}" for s, _, f in fields]


def build(cls, name, value):
    """Construct a section with one field set and every other field at its default."""
    return cls(**{name: value})


def raises_for(field_name: str, *needles: str):
    """Context manager: a ConfigError naming field_name whose message contains each needle."""

    class _Check:
        def __enter__(self):
            self._ctx = pytest.raises(ConfigError)
            self.info = self._ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            suppressed = self._ctx.__exit__(*exc)
            if not suppressed:  # another exception type: let it propagate as it is
                return False
            error = self.info.value
            assert error.field == field_name, str(error)
            message = str(error)
            assert message.startswith(field_name), message
            for needle in needles:
                assert needle in message, (needle, message)
            return suppressed

    return _Check()


# ---------------------------------------------------------------------------------------------------------------
# Field validation
# ---------------------------------------------------------------------------------------------------------------


def test_defaults_are_valid_and_config_error_is_a_value_error():
    cfg = RunConfig()
    assert cfg.model == ModelConfig() and cfg.train == TrainConfig() and cfg.augment == AugmentConfig()
    assert issubclass(ConfigError, ValueError)
    error = ConfigError("train.lr", 5, "a number from 1e-05 to 1.0")
    assert (error.field, error.value, error.allowed) == ("train.lr", 5, "a number from 1e-05 to 1.0")
    assert str(error) == "train.lr = 5 is not allowed: a number from 1e-05 to 1.0"


@pytest.mark.parametrize(("section", "cls", "f"), NUMERIC, ids=ids(NUMERIC))
def test_numeric_bounds_are_inclusive_and_values_outside_rejected(section, cls, f):
    lo, hi = f.metadata["range"]
    integer = f.metadata["integer"]
    kind = "a whole number" if integer else "a number"
    # The bounds themselves are valid (train.subset's low end 0 means "all"; its high end needs no batch check).
    for value in (lo, hi):
        assert getattr(build(cls, f.name, value), f.name) == value
    step = 1 if integer else (hi - lo) * 0.01
    for value in (lo - step, hi + step):
        with raises_for(f"{section}.{f.name}", kind, f"from {lo} to {hi}") as info:
            build(cls, f.name, value)
        assert info.value.value == value


@pytest.mark.parametrize(("section", "cls", "f"), NUMERIC, ids=ids(NUMERIC))
@pytest.mark.parametrize("value", ["1", None, [1], True, False], ids=["str", "None", "list", "True", "False"])
def test_numeric_fields_reject_wrong_types_including_bool(section, cls, f, value):
    with raises_for(f"{section}.{f.name}", "from"):
        build(cls, f.name, value)


@pytest.mark.parametrize(("section", "cls", "f"), FLOAT, ids=ids(FLOAT))
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_float_fields_reject_nan_and_infinity(section, cls, f, value):
    with raises_for(f"{section}.{f.name}", "a number"):
        build(cls, f.name, value)


@pytest.mark.parametrize(("section", "cls", "f"), INTEGER, ids=ids(INTEGER))
def test_integer_fields_reject_floats_and_nan(section, cls, f):
    lo, _ = f.metadata["range"]
    for value in (lo + 0.5, math.nan, math.inf):
        with raises_for(f"{section}.{f.name}", "a whole number"):
            build(cls, f.name, value)


@pytest.mark.parametrize(("section", "cls", "f"), FLOAT, ids=ids(FLOAT))
def test_float_fields_accept_ints_inside_the_range(section, cls, f):
    lo, hi = f.metadata["range"]
    whole = math.ceil(lo)
    if whole <= hi:
        assert getattr(build(cls, f.name, whole), f.name) == whole


@pytest.mark.parametrize(("section", "cls", "f"), NUMERIC, ids=ids(NUMERIC))
def test_huge_integers_are_a_config_error_not_an_overflow(section, cls, f):
    # An integer too large for a float (a JSON file or link can hold one) must be judged, not crash math.isfinite.
    with raises_for(f"{section}.{f.name}", "from"):
        build(cls, f.name, 10**400)


@pytest.mark.parametrize(("section", "cls", "f"), CHOICE, ids=ids(CHOICE))
def test_choice_fields_reject_unknown_values(section, cls, f):
    choices = f.metadata["choices"]
    for value in choices:
        if (f.name, value) == ("head", "none"):  # the stack must make the 10 outputs itself, at 1x1
            assert cls(head="none", layers="8,M,8,M,8,M,10p:relu=0").head == "none"
            continue
        assert getattr(build(cls, f.name, value), f.name) == value
    for value in ("bogus", choices[0].upper(), "", None, 1):
        with raises_for(f"{section}.{f.name}", "one of " + ", ".join(choices)):
            build(cls, f.name, value)


@pytest.mark.parametrize(("section", "cls", "f"), FLAG, ids=ids(FLAG))
def test_flag_fields_take_only_booleans(section, cls, f):
    for value in (True, False):
        assert getattr(build(cls, f.name, value), f.name) is value
    for value in (1, 0, "true", None):
        with raises_for(f"{section}.{f.name}", "true or false"):
            build(cls, f.name, value)


def test_layers_must_be_text():
    with raises_for("model.layers", "a string"):
        ModelConfig(layers=8)


# ---------------------------------------------------------------------------------------------------------------
# The layer stack
# ---------------------------------------------------------------------------------------------------------------


def test_parse_layers_reads_every_token_kind_and_separator():
    layers = parse_layers(" 8, 16p  M,T8 ,128 ")
    assert layers == (
        Layer("conv", 8, 3, 0),
        Layer("conv", 16, 3, 1),
        Layer("pool", 0, 2, 0),
        Layer("conv", 8, 1, 0),
        Layer("conv", 128, 3, 0),
    )
    assert format_layers(layers) == "8,16p,M,T8,128"
    assert [layer.label for layer in layers[:4]] == [
        "3x3 conv to 8 channels",
        "3x3 conv to 16 channels (padded)",
        "2x2 max-pool",
        "1x1 transition conv to 8 channels",
    ]


@pytest.mark.parametrize("spec", ["", "   ", ",,", " , "])
def test_empty_stack_is_rejected(spec):
    with raises_for("model.layers", "at least one layer"):
        ModelConfig(layers=spec)


@pytest.mark.parametrize(
    ("spec", "position", "token"),
    [
        ("8,X", 2, "X"),
        ("8p1", 1, "8p1"),
        ("8,T", 2, "T"),
        ("Tp8", 1, "Tp8"),
        ("M8", 1, "M8"),
        ("8,m", 2, "m"),
        ("8,16,3x3", 3, "3x3"),
        ("8;16", 1, "8;16"),
        ("-8", 1, "-8"),
        ("8P", 1, "8P"),
    ],
)
def test_stack_syntax_errors_name_the_layer(spec, position, token):
    with raises_for("model.layers", f"layer {position} ({token!r})", "3x3 conv", "max-pool"):
        ModelConfig(layers=spec)


def test_too_many_layers_is_rejected_and_the_maximum_allowed():
    assert len(ModelConfig(layers=",".join(["8p"] * MAX_LAYERS)).parsed_layers) == MAX_LAYERS
    with raises_for("model.layers", f"at most {MAX_LAYERS} layers", f"has {MAX_LAYERS + 1}"):
        ModelConfig(layers=",".join(["8p"] * (MAX_LAYERS + 1)))
    # A pasted wall of layers is quoted only in part, so the message stays readable.
    with raises_for("model.layers", f"at most {MAX_LAYERS} layers", "has 5000", "(15000 characters)") as info:
        ModelConfig(layers="8p," * 5000)
    assert len(str(info.value)) < 200


@pytest.mark.parametrize("token", ["0", "T0", "1025", "T1025", "0p", "99999", "1234567"])
def test_channels_out_of_range_are_rejected(token):
    with raises_for("model.layers", f"layer 2 ({token!r})", f"1 to {MAX_CHANNELS:,} output channels"):
        ModelConfig(layers=f"8,{token}")


def test_channel_bounds_are_accepted():
    layers = ModelConfig(layers=f"1,{MAX_CHANNELS},T1,T{MAX_CHANNELS}").parsed_layers
    assert [layer.channels for layer in layers] == [1, MAX_CHANNELS, 1, MAX_CHANNELS]


@pytest.mark.parametrize("spec", ["M", "M,M"])
def test_pools_alone_are_rejected(spec):
    with raises_for("model.layers", "at least one convolution"):
        ModelConfig(layers=spec)


def sizes(layers: str) -> list[int]:
    return [block.out_size for block in plan(ModelConfig(layers=layers)).blocks]


def test_feature_sizes_follow_the_arithmetic():
    # 28 -(3x3)-> 26 -(3x3 p1)-> 26 -(pool)-> 13 -(1x1)-> 13 -(3x3)-> 11 -(pool)-> 5
    assert sizes("8,8p,M,T8,8,M") == [26, 26, 13, 13, 11, 5]
    # 5x5 and 7x7 kernels, padded or not, and an average pool: 28 -> 24 -> 24 -> 12 -> 6 -> 6
    assert sizes("8:k=5,8p:k=7,A,8,8p:k=5") == [24, 24, 12, 10, 10]


def test_a_conv_that_would_shrink_the_map_below_1x1_names_the_layer_and_suggests_padding():
    # 28 -> 26 -> 13 -> 11 -> 5 -> 3 -> 1, then a 3x3 conv on a 1x1 map would leave -1.
    with raises_for(
        "model.layers", "after layer 7 (3x3 conv to 8 channels)", "from 1x1 below 1x1", "padding", "one pool fewer"
    ):
        ModelConfig(layers="8,M,8,M,8,M,8")
    # The same stack with the last conv padded is fine: 1 + 2 - 3 + 1 = 1.
    assert sizes("8,M,8,M,8,M,8p")[-1] == 1


def test_a_pool_that_would_shrink_the_map_below_1x1_names_the_layer_and_suggests_one_pool_fewer():
    # 28 -> 14 -> 7 -> 3 -> 1 -> 0
    with raises_for("model.layers", "after layer 6 (2x2 max-pool)", "from 1x1 below 1x1", "one pool fewer"):
        ModelConfig(layers="8p,M,M,M,M,M")


def test_subset_smaller_than_a_batch_is_rejected():
    assert TrainConfig(subset=128, batch_size=128).subset == 128
    assert TrainConfig(subset=0, batch_size=512).subset == 0
    with raises_for("train.subset", "at least one batch (128 images)", str(TRAIN_SIZE)):
        TrainConfig(subset=127, batch_size=128)
    with raises_for("train.subset", "at least one batch (512 images)"):
        TrainConfig(subset=500, batch_size=512)


def test_activation_memory_cap_names_the_limit():
    # 128 padded channels at 28x28, kept twice (conv output and ReLU): 128*784*2 floats = 0.77 MB per image.
    model = ModelConfig(layers="128p", head="gap_conv")
    assert plan(model).activation_mb(128) == pytest.approx(128 * 784 * 2 * 128 * 4 / 2**20)
    assert RunConfig(model, train=TrainConfig(batch_size=128))  # ~98 MB: allowed
    with raises_for("model.layers", f"the limit is {ACTIVATION_BUDGET_MB} MB", "~392 MB", "batch of 512"):
        RunConfig(model, train=TrainConfig(batch_size=512))
    # Batch norm and dropout each keep one more copy; here that tips a 256-image batch over the limit.
    heavy = ModelConfig(layers="128p", head="gap_conv", batch_norm="before_relu", dropout=0.1)
    assert plan(heavy).activation_mb(256) > ACTIVATION_BUDGET_MB >= plan(model).activation_mb(256)
    with raises_for("model.layers", f"{ACTIVATION_BUDGET_MB} MB"):
        RunConfig(heavy, train=TrainConfig(batch_size=256))


def test_run_config_sections_must_have_their_types():
    with raises_for("model", "a ModelConfig"):
        RunConfig(model=AugmentConfig())
    with raises_for("train", "a TrainConfig"):
        RunConfig(train={"epochs": 3})


def test_replace_changes_single_fields_and_rejects_unknown_sections():
    cfg = RunConfig().replace(train={"epochs": 3}, model={"head": "gap_conv"})
    assert (cfg.train.epochs, cfg.model.head, cfg.train.lr) == (3, "gap_conv", RunConfig().train.lr)
    assert RunConfig().replace(augment=AugmentConfig(rotation=5.0)).augment.rotation == 5.0
    with raises_for("trian", "one of the sections model, augment, train"):
        RunConfig().replace(trian={"epochs": 3})
    with raises_for("train.epochs"):
        RunConfig().replace(train={"epochs": 0})


# ---------------------------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------------------------


def everything_changed() -> RunConfig:
    """A valid config in which every single field differs from its default."""
    cfg = RunConfig(
        ModelConfig(
            layers="10p:bn=before:affine=0,12:k=5,A:drop=0.2,T8:bias=0,16 16:relu=0:dk=element",
            batch_norm="after_relu",
            dropout=0.123456789,
            dropout_kind="channel",
            head="gap_linear",
            bias=True,
            log_softmax=False,
            hidden="32,16",
            hidden_dropout=0.1,
        ),
        AugmentConfig(
            rotation=7.25,
            fill=0.5,
            translate=0.1,
            scale=0.05,
            shear=3.3,
            brightness=0.2,
            contrast=0.3,
            erase_prob=0.5,
            erase_size=0.2,
        ),
        TrainConfig(
            epochs=3,
            batch_size=64,
            optimizer="adamw",
            lr=1 / 3,
            momentum=0.5,
            weight_decay=1e-4,
            schedule="onecycle",
            step_size=2,
            gamma=0.5,
            max_lr=0.05,
            pct_start=0.3,
            subset=1000,
            seed=42,
            threads=2,
            device="cpu",
        ),
    )
    default = RunConfig()
    for section in SECTIONS:
        for f in dataclasses.fields(getattr(cfg, section)):
            assert getattr(getattr(cfg, section), f.name) != getattr(getattr(default, section), f.name), f.name
    return cfg


def random_stack(rng: random.Random) -> str:
    tokens = []
    for _ in range(rng.randint(1, 7)):
        kind = rng.random()
        channels = rng.randint(1, 32)
        options = rng.sample([":bn=after", ":affine=0", ":relu=0", ":drop=0.05", ":dk=channel", ":bias=1", ":k=5"], 2)
        if kind < 0.2:
            tokens.append(rng.choice(["M", "A", "M:drop=0.1", "A:dk=channel"]))
        else:
            base = f"T{channels}" if kind < 0.35 else f"{channels}{rng.choice(['', 'p'])}"
            tokens.append(base + "".join(o for o in options if not (base.startswith("T") and o == ":k=5")))
    return rng.choice([",", ", ", " "]).join(tokens)


def random_value(rng: random.Random, f):
    meta = f.metadata
    if "choices" in meta:
        return rng.choice(meta["choices"])
    if meta.get("flag"):
        return rng.random() < 0.5
    if meta.get("text"):
        return random_stack(rng) if meta["key"] == "layers" else rng.choice(["", "", "32", "64, 16"])
    lo, hi = meta["range"]
    if meta["integer"]:
        return rng.randint(lo, hi)
    return rng.choice([lo, hi, rng.uniform(lo, hi), round(rng.uniform(lo, hi), 2)])


def random_configs(count: int, seed: int = 20240601) -> list[RunConfig]:
    """Valid configs with every field drawn at random (invalid draws are simply drawn again)."""
    rng = random.Random(seed)
    configs = []
    while len(configs) < count:
        sections = {
            name: {f.name: random_value(rng, f) for f in dataclasses.fields(cls)} for name, cls in SECTIONS.items()
        }
        if rng.random() < 0.5:
            sections["train"]["subset"] = 0
        try:
            configs.append(RunConfig(**{name: SECTIONS[name](**values) for name, values in sections.items()}))
        except ConfigError:
            continue
    return configs


ROUND_TRIP_CONFIGS = [p.config for p in PRESETS] + [RunConfig(), everything_changed()] + random_configs(150)
ROUND_TRIP_IDS = [p.name for p in PRESETS] + ["default", "everything"] + [f"random{i}" for i in range(150)]


@pytest.mark.parametrize("cfg", ROUND_TRIP_CONFIGS, ids=ROUND_TRIP_IDS)
def test_round_trips_are_lossless(cfg):
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert RunConfig.from_json(cfg.to_json()) == cfg
    assert RunConfig.from_query(cfg.to_query()) == cfg
    assert RunConfig.from_query("?" + cfg.to_query()) == cfg
    assert RunConfig.from_query(cfg.to_query_params()) == cfg
    # Field types survive too (an int stays an int, a float a float, a flag a bool).
    again = RunConfig.from_query(cfg.to_query())
    assert [type(v) for v in again.to_dict()["train"].values()] == [type(v) for v in cfg.to_dict()["train"].values()]


def test_random_configs_really_vary():
    configs = random_configs(150)
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert len({getattr(getattr(c, section), f.name) for c in configs}) > 1, f"{section}.{f.name}"


def test_query_holds_only_non_default_fields():
    assert RunConfig().to_query() == ""
    assert RunConfig.from_query("") == RunConfig()
    cfg = RunConfig().replace(train={"epochs": 3, "lr": 0.05}, model={"bias": True})
    assert cfg.to_query_params() == {"ep": "3", "lr": "0.05", "bias": "1"}
    every = everything_changed().to_query_params()
    keys = [f.metadata["key"] for _, _, f in ALL_FIELDS]
    assert sorted(every) == sorted(keys) and len(set(keys)) == len(keys)


def test_to_dict_is_plain_json_of_every_field():
    data = everything_changed().to_dict()
    assert list(data) == ["model", "augment", "train"]
    for section, cls in SECTIONS.items():
        assert list(data[section]) == [f.name for f in dataclasses.fields(cls)]
    assert json.loads(everything_changed().to_json()) == data


def test_sections_missing_from_a_dict_keep_their_defaults():
    cfg = RunConfig.from_dict({"train": {"epochs": 2}})
    assert cfg == RunConfig().replace(train={"epochs": 2})
    assert RunConfig.from_dict({}) == RunConfig()


# ---------------------------------------------------------------------------------------------------------------
# Malformed input
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "field_name", "needle"),
    [
        ({"modle": {}}, "modle", "only the sections model, augment, train"),
        ({"model": {}, "zeta": {}, "alpha": {}}, "alpha", "only the sections"),
        ({"model": {"layerz": "8"}}, "model.layerz", "only the fields layers, batch_norm"),
        ({"train": {"epochs": 2, "epoch": 3}}, "train.epoch", "only the fields epochs"),
        ({"model": "8,16"}, "model", "an object with the fields layers"),
        ({"train": None}, "train", "an object with the fields epochs"),
        ({"train": {"epochs": "3"}}, "train.epochs", "a whole number from 1 to 20"),
        ({"train": {"epochs": 3.5}}, "train.epochs", "a whole number"),
        ({"model": {"bias": "yes"}}, "model.bias", "true or false"),
        ([1, 2], "config", "a JSON object"),
        ("text", "config", "a JSON object"),
        (None, "config", "a JSON object"),
    ],
)
def test_malformed_dicts_raise_config_errors_naming_the_key(data, field_name, needle):
    with raises_for(field_name, needle):
        RunConfig.from_dict(data)


def test_unknown_non_string_keys_are_named_not_a_type_error():
    with raises_for("1", "only the sections"):
        RunConfig.from_dict({1: {}, "x": {}})
    with raises_for("train.2", "only the fields"):
        RunConfig.from_dict({"train": {2: 1, "z": 1}})


@pytest.mark.parametrize(
    ("text", "field_name", "needle"),
    [
        ("{", "config", "valid JSON"),
        ("", "config", "valid JSON"),
        ('{"train": {"epochs": 3,}}', "config", "valid JSON"),
        ("[" * 100_000 + "]" * 100_000, "config", "valid JSON"),
        ("[1, 2]", "config", "a JSON object"),
        ("3", "config", "a JSON object"),
        ("null", "config", "a JSON object"),
        ('"model"', "config", "a JSON object"),
        ('{"modle": {}}', "modle", "only the sections"),
        ('{"augment": {"rotate": 5}}', "augment.rotate", "only the fields rotation"),
        ('{"train": {"lr": NaN}}', "train.lr", "a number from"),
        ('{"train": {"lr": Infinity}}', "train.lr", "a number from"),
        ('{"train": {"lr": 1e400}}', "train.lr", "a number from"),
        ('{"train": {"seed": ' + "9" * 400 + "}}", "train.seed", "a whole number"),
        ('{"train": {"epochs": true}}', "train.epochs", "a whole number"),
    ],
    ids=lambda v: v[:40] if isinstance(v, str) else None,
)
def test_malformed_json_raises_config_errors_naming_the_key(text, field_name, needle):
    with raises_for(field_name, needle) as info:
        RunConfig.from_json(text)
    assert len(str(info.value)) < 400, "a huge input must not flood the message"


def test_integers_given_as_whole_floats_are_accepted_in_dicts_and_json():
    cfg = RunConfig.from_json('{"train": {"epochs": 3.0, "batch_size": 64.0, "subset": 640.0, "seed": 7.0}}')
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.subset, cfg.train.seed) == (3, 64, 640, 7)
    assert all(type(v) is int for v in (cfg.train.epochs, cfg.train.batch_size, cfg.train.subset, cfg.train.seed))
    assert RunConfig.from_dict({"train": {"epochs": 3.0}}).train.epochs == 3
    for bad in (3.5, 3.0000001):
        with raises_for("train.epochs", "a whole number"):
            RunConfig.from_dict({"train": {"epochs": bad}})
        with raises_for("train.epochs", "a whole number"):
            RunConfig.from_json(json.dumps({"train": {"epochs": bad}}))


@pytest.mark.parametrize(
    ("query", "field_name", "needle"),
    [
        ("foo=1", "link setting 'foo'", "only the keys"),
        ("ep=3&model=1", "link setting 'model'", "only the keys"),
        ("lr=abc", "train.lr", "a number from 1e-05 to 1.0"),
        ("lr=", "train.lr", "a number"),
        ("lr=nan", "train.lr", "a number"),
        ("lr=inf", "train.lr", "a number"),
        ("ep=3.5", "train.epochs", "a whole number from 1 to 20"),
        ("ep=three", "train.epochs", "a whole number"),
        ("ep=99", "train.epochs", "a whole number from 1 to 20"),
        ("bias=yes", "model.bias", "1 or 0"),
        ("bias=true", "model.bias", "1 or 0"),
        ("lsm=2", "model.log_softmax", "1 or 0"),
        ("head=mlp", "model.head", "one of fc, gap_conv"),
        ("layers=8,X", "model.layers", "layer 2 ('X')"),
        ("seed=" + "9" * 400, "train.seed", "a whole number"),
    ],
)
def test_malformed_queries_raise_config_errors_naming_the_key(query, field_name, needle):
    with raises_for(field_name, needle):
        RunConfig.from_query(query)


def test_a_duplicated_query_key_is_rejected_and_named():
    with raises_for("link", "each setting at most once", "'ep'"):
        RunConfig.from_query("ep=3&ep=4")
    # Even in a link too long to quote whole, the message says which setting came twice.
    long = RunConfig().replace(model={"layers": "10,10,16,M,T10,10,16,16"}, train={"lr": 0.0123}).to_query()
    with raises_for("link", "each setting at most once", "'lr'"):
        RunConfig.from_query(long + "&sched=step&lr=0.5")


def test_query_keeps_defaults_for_absent_keys_and_parses_values():
    cfg = RunConfig.from_query("?ep=4&lr=0.5&bias=1&lsm=0&layers=8%2C16%2CM&opt=adam")
    assert (cfg.train.epochs, cfg.train.lr, cfg.model.bias, cfg.model.log_softmax) == (4, 0.5, True, False)
    assert (cfg.model.layers, cfg.train.optimizer, cfg.train.batch_size) == ("8,16,M", "adam", 128)


def test_onecycle_needs_a_warm_up_of_two_steps():
    """A 5-step OneCycleLR run with pct_start 0.2 used to crash the scheduler with ZeroDivisionError."""
    with pytest.raises(ConfigError, match="warm-up must last at least 2 of the run's 5 optimizer steps"):
        TrainConfig(epochs=1, subset=640, batch_size=128, schedule="onecycle", pct_start=0.2)
    assert TrainConfig(epochs=1, subset=1280, batch_size=128, schedule="onecycle", pct_start=0.2).pct_start == 0.2


@pytest.mark.parametrize("token", ["9" * 995, "T" + "9" * 5000, "x" * 10_000])
def test_a_huge_layer_token_is_refused_with_a_short_message(token):
    # Found by the fuzz set: the message echoed a 995-digit token whole (and int() refuses over 4,300 digits).
    with pytest.raises(ConfigError) as raised:
        RunConfig.from_query({"layers": f"8,{token}"})
    assert len(str(raised.value)) < 400 and "layer 2" in str(raised.value)
