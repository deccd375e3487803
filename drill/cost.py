"""What an epoch of a config costs on this server, and the limit the server sets on it.

An epoch's seconds are estimated from what the layer table says of the network (its multiply-adds and the values
its layers output, per image), the batch size, the augmentation and the number of training images, with
coefficients fitted to epochs measured on this machine by `python -m drill calibrate` and shipped in
results/epoch-cost.json, so a fresh server estimates without measuring anything.
"""

from __future__ import annotations

import functools
import json
import math
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from drill.config import TRAIN_SIZE as TRAIN_IMAGES
from drill.config import AugmentConfig, ModelConfig, RunConfig, TrainConfig
from drill.run_record import Status
from drill.summary import summarize

COST_FILE = Path(__file__).resolve().parent.parent / "results" / "epoch-cost.json"
TEST_IMAGES = 10_000
LIMIT_VARIABLE = "DRILL_MAX_EPOCH_S"
# A 15-epoch run at the limit holds one of a 2-core server's two training slots for an hour of CPU time (longer on a
# busy server's clock), a whole lesson. The skeleton, the lesson's heaviest step, is estimated at under half of
# it (results/epoch-cost.json), so the estimate's error can't push it over; the write-ups' widest skeleton (6.4M
# parameters, 1,024 channels) is estimated at over one and a half times it, so it is refused unless the server is
# given a larger limit.
DEFAULT_MAX_EPOCH_S = 240.0
# One coefficient per feature: the seconds a training image costs per unit of it, and then a test image's.
TRAIN_FEATURES = ("mult_adds", "values", "geometric", "colour", "per_batch", "per_image")
TEST_FEATURES = ("mult_adds", "values", "per_image")


@dataclass(frozen=True)
class Estimate:
    """An epoch of a config on this server: its training pass and the test pass after it."""

    train_s: float
    test_s: float
    images: int  # training images an epoch

    @property
    def seconds(self) -> float:
        """The whole epoch: what a student waits between two points of the test-accuracy curve."""
        return self.train_s + self.test_s


def features(cfg: RunConfig) -> dict[str, float]:
    """What drives a training image's time, from the layer table: per image, the network's multiply-adds and the
    values all its layers output (batch norm, ReLU, dropout and pooling each touch every one of them, forward and
    back); whether the image is warped (rotation, shift, scale, shear share one resampling) and how many colour or
    erase steps it goes through; and, per image, the share of a batch's fixed cost (the optimizer step, the calls)."""
    summary = summarize(cfg.model)
    augment = cfg.augment
    geometric = bool(augment.rotation or augment.translate or augment.scale or augment.shear)
    colour = sum(bool(x) for x in (augment.brightness, augment.contrast, augment.erase_prob))
    return {
        "mult_adds": float(summary.mult_adds),
        "values": float(sum(math.prod(row.output_shape) for row in summary.rows)),
        "geometric": float(geometric),
        "colour": float(colour),
        "per_batch": 1.0 / cfg.train.batch_size,
        "per_image": 1.0,
    }


def seconds_per_image(coefficients: dict[str, float], values: dict[str, float]) -> float:
    """Seconds per image: the coefficients applied to the features they name."""
    return sum(coefficients[name] * values[name] for name in coefficients)


def training_images(cfg: RunConfig) -> int:
    """Images an epoch trains on: the subset, or all of them."""
    return cfg.train.subset or TRAIN_IMAGES


@functools.cache
def coefficients(path: Path = COST_FILE) -> dict[str, dict[str, float]]:
    """The fitted coefficients in the shipped results file: {"train": {...}, "test": {...}}."""
    return json.loads(path.read_text())["coefficients"]


def estimate(cfg: RunConfig, fitted: dict[str, dict[str, float]] | None = None) -> Estimate:
    """An epoch of cfg on one thread of this server, by the fitted coefficients (those shipped, unless given)."""
    fitted = fitted or coefficients()
    values = features(cfg)
    images = training_images(cfg)
    return Estimate(
        images * seconds_per_image(fitted["train"], values),
        TEST_IMAGES * seconds_per_image(fitted["test"], values),
        images,
    )


def seconds_text(seconds: float) -> str:
    """A duration as the pages say it: "4.5 s", "23 s", "740 s"."""
    return f"{seconds:.1f} s" if seconds < 9.95 else f"{seconds:.0f} s"


def epoch_note(cfg: RunConfig) -> str:
    """The estimate in one line, for Build and Train."""
    epoch = estimate(cfg)
    run = epoch.seconds * cfg.train.epochs
    whole = f"{run / 60:.0f} min" if run >= 120 else seconds_text(run)
    return (
        f"About {seconds_text(epoch.seconds)} per epoch on this server ({epoch.images:,} training images and the "
        f"{TEST_IMAGES:,}-image test pass), so about {whole} for {cfg.train.epochs} epoch"
        f"{'s' if cfg.train.epochs != 1 else ''} when it trains alone on a core."
    )


# -- the server's limit -------------------------------------------------------------------------------------------
def max_epoch_seconds() -> float:
    """The longest estimated epoch this server trains: $DRILL_MAX_EPOCH_S, else DEFAULT_MAX_EPOCH_S; ValueError
    for a setting that is not a number of seconds above 0."""
    text = os.environ.get(LIMIT_VARIABLE, "").strip()
    if not text:
        return DEFAULT_MAX_EPOCH_S
    try:
        limit = float(text)
    except ValueError:
        limit = math.nan
    if not (math.isfinite(limit) and limit > 0):
        raise ValueError(f"{LIMIT_VARIABLE}={text!r} is not allowed: a number of seconds an epoch, above 0")
    return limit


def refusal(cfg: RunConfig, limit: float | None = None) -> str | None:
    """Why this server will not train cfg: its estimated epoch passes the limit (the one given, else the
    server's), or the server's limit is set to something that can't be used. None when it may train."""
    try:
        limit = limit if limit is not None else max_epoch_seconds()
    except ValueError as error:
        return f"This server can't start runs: {error}."
    epoch = estimate(cfg).seconds
    if epoch <= limit:
        return None
    return (
        f"This model would train for about {seconds_text(epoch)} per epoch on this server; this server's limit is "
        f"{seconds_text(limit)} ({LIMIT_VARIABLE}): use fewer channels, an earlier max-pool, or fewer training "
        "images."
    )


# -- calibration --------------------------------------------------------------------------------------------------
def calibration_configs() -> list[tuple[str, RunConfig]]:
    """What `calibrate` times: every preset, and variations on them that pull the features apart (batch size
    alone, augmentation alone, dropout alone, more multiply-adds for the values computed)."""
    from drill.presets import PRESETS, get_preset

    final, lean, bn = (get_preset(name).config for name in ("final", "lean", "batchnorm"))
    colour = AugmentConfig(brightness=0.2, contrast=0.2, erase_prob=0.5)
    middle = ModelConfig(layers="16p,32p,M,64,M", head="fc")
    wide_bn = ModelConfig(layers="16,32,M,32,32,M", head="gap_conv", batch_norm="before_relu", dropout=0.05)
    # Twice the skeleton's multiply-adds over fewer values: wide convs after an early pool, as a big network has.
    wide_late = ModelConfig(layers="32,M,128p,128p,128p", head="fc")
    variants = [
        ("final, batch 128", final.replace(train={"batch_size": 128})),
        ("final, batch 16", final.replace(train={"batch_size": 16})),
        ("final, no augmentation", final.replace(augment=AugmentConfig())),
        ("lean, batch 32", lean.replace(train={"batch_size": 32})),
        ("lean, colour and erase", lean.replace(augment=colour)),
        ("batchnorm, dropout 0.1", bn.replace(model={"dropout": 0.1})),
        ("16p,32p,M,64,M", RunConfig(middle, AugmentConfig(), TrainConfig(batch_size=128))),
        ("16,32,M,32,32,M with batch norm", RunConfig(wide_bn, final.augment, TrainConfig(batch_size=64))),
        ("32,M,128p,128p,128p", RunConfig(wide_late, AugmentConfig(), TrainConfig(batch_size=128))),
    ]
    return [(preset.name, preset.config) for preset in PRESETS] + variants


def _clocks() -> tuple[float, float]:
    return time.thread_time(), time.perf_counter()


def _train_seconds(cfg: RunConfig, data, images: int) -> tuple[float, float]:
    """(CPU, wall) seconds of one training pass over `images` images of cfg on one thread, the test pass left out.

    CPU seconds of the training thread are what the estimate is fitted to: on a shared machine the wall clock also
    counts the time other processes had the core, which differs from one slice to the next."""
    from drill.train import train

    marks = []

    def on_event(event: str, payload: dict) -> None:
        if event == "start" or (event == "batch" and payload["batch"] == payload["batches"]):
            marks.append(_clocks())

    result = train(cfg.replace(train={"epochs": 1, "subset": images}), data, on_event, threads=1)
    if result.status != Status.FINISHED:
        raise RuntimeError(f"a calibration run {result.status}: {result.reason}")
    (cpu0, wall0), (cpu1, wall1) = marks
    return cpu1 - cpu0, wall1 - wall0


def _test_seconds(cfg: RunConfig, data, images: int) -> tuple[float, float]:
    """(CPU, wall) seconds of the test pass over the first `images` test images, on one thread."""
    import torch

    from drill.model import build_model
    from drill.train import evaluate

    torch.set_num_threads(1)
    model = build_model(cfg.model, seed=cfg.train.seed)
    cpu0, wall0 = _clocks()
    evaluate(model, data.test_images[:images], data.test_labels[:images])
    cpu1, wall1 = _clocks()
    return cpu1 - cpu0, wall1 - wall0


def measure(cfg: RunConfig, data, slice_s: float = 3.0, repeats: int = 5, test_images: int = 2500) -> dict:
    """Seconds per training image and per test image of cfg on one thread: the median over repeats of a slice of
    an epoch (as many whole batches as take about slice_s, at least 10), after one short slice that warms up."""
    batch = cfg.train.batch_size
    probe = 10 * batch
    per = _train_seconds(cfg, data, probe)[0] / probe
    images = min(TRAIN_IMAGES, batch * max(10, round(slice_s / per / batch)))
    cpu, wall = zip(*(_train_seconds(cfg, data, images) for _ in range(repeats)), strict=True)
    _test_seconds(cfg, data, test_images)
    test_cpu, _ = zip(*(_test_seconds(cfg, data, test_images) for _ in range(repeats)), strict=True)
    return {
        "images": images,
        "train_s_per_image": statistics.median(cpu) / images,
        "test_s_per_image": statistics.median(test_cpu) / test_images,
        "train_spread": round((max(cpu) - min(cpu)) / statistics.median(cpu), 3),
        "wall_over_cpu": round(sum(wall) / sum(cpu), 3),
    }


def fit(rows: list[dict], names: tuple[str, ...], target: str) -> dict[str, float]:
    """Non-negative coefficients for the named features that best predict rows' target in relative terms (each
    row's error as a fraction of its own time, so a small network counts as much as the skeleton). A feature
    whose best weight is negative is left out (weight 0) and the rest fitted again."""
    import numpy as np

    kept = list(names)
    while True:
        a = np.array([[row["features"][name] / row[target] for name in kept] for row in rows])
        scale = np.abs(a).max(axis=0)  # features span 1 to 1e7: scaled columns keep the solve well conditioned
        solution = np.linalg.lstsq(a / scale, np.ones(len(rows)), rcond=None)[0] / scale
        if (solution >= 0).all():
            weights = dict(zip(kept, solution.tolist(), strict=True))
            return {name: weights.get(name, 0.0) for name in names}
        kept.pop(int(np.argmin(solution)))


def calibrate(data, log=print, slice_s: float = 3.0, repeats: int = 5, whole: tuple[str, ...] = ()) -> dict:
    """Time every calibration config, fit the coefficients, and compare estimate with measurement per config; then
    time a whole epoch of each preset named in `whole`, which checks the slices' scaling up to an epoch: what
    results/epoch-cost.json holds."""
    from drill.presets import get_preset

    rows = []
    for name, cfg in calibration_configs():
        measured = measure(cfg, data, slice_s, repeats)
        rows.append({"name": name, "config": cfg.to_dict(), "features": features(cfg), **measured})
        log(
            f"{name}: {measured['train_s_per_image'] * 1e3:.3f} ms a training image "
            f"({measured['images']:,} images, spread {measured['train_spread']:.0%}), "
            f"{measured['test_s_per_image'] * 1e3:.3f} ms a test image"
        )
    fitted = {
        "train": fit(rows, TRAIN_FEATURES, "train_s_per_image"),
        "test": fit(rows, TEST_FEATURES, "test_s_per_image"),
    }
    for row in rows:
        cfg = RunConfig.from_dict(row["config"])
        measured_s = training_images(cfg) * row["train_s_per_image"] + TEST_IMAGES * row["test_s_per_image"]
        row["epoch_s"] = {"measured": round(measured_s, 2), "estimated": round(estimate(cfg, fitted).seconds, 2)}
        row["error"] = round(row["epoch_s"]["estimated"] / measured_s - 1, 3)
    epochs = {}
    for name in whole:
        cfg = get_preset(name).config
        seconds = _train_seconds(cfg, data, training_images(cfg))[0] + _test_seconds(cfg, data, TEST_IMAGES)[0]
        estimated = estimate(cfg, fitted).seconds
        epochs[name] = {"measured": round(seconds, 2), "estimated": round(estimated, 2)}
        epochs[name]["error"] = round(estimated / seconds - 1, 3)
        log(f"{name}, a whole epoch: {seconds:.1f} s, estimated {estimated:.1f} s")
    return {"coefficients": fitted, "configs": rows, "whole_epochs": epochs}
