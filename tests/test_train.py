"""Tests for drill.train on real MNIST (small subsets): learning, reproducibility, stopping, failing, the callback."""

from __future__ import annotations

import dataclasses
import json
import math
import threading

import pytest
import torch

from drill import train as train_module
from drill.checkpoint import Checkpoint
from drill.config import RunConfig, TrainConfig
from drill.data import Mnist
from drill.presets import get_preset
from drill.run_record import EPOCH_KEYS, Epoch, RunRecord
from drill.train import (
    Schedule,
    batches_per_epoch,
    evaluate,
    lr_curve,
    predict,
    stratified_subset,
    train,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BATCH_KEYS = {"epoch", "batch", "batches", "loss", "lr", "images_per_s"}
START_KEYS = {"params", "epochs", "batches", "images"}

# The lean network with batch norm: cheap per batch and quick to learn.
LEARNS = get_preset("batchnorm").config.replace(train={"subset": 5000, "epochs": 1, "lr": 0.05, "batch_size": 64})
# Dropout, batch norm and rotation: every random draw of a run (order, augmentation, dropout) is exercised.
TINY = get_preset("regularised").config.replace(train={"subset": 320, "batch_size": 64, "epochs": 2, "lr": 0.05})


class Recorder:
    """A callback that keeps every (event, payload) and can act on a batch."""

    def __init__(self, on_batch=None):
        self.events: list[tuple[str, dict]] = []
        self.on_batch = on_batch

    def __call__(self, event: str, payload: dict) -> None:
        self.events.append((event, dict(payload)))
        if event == "batch" and self.on_batch:
            self.on_batch(payload)

    def kinds(self) -> list[str]:
        return [event for event, _ in self.events]

    def payloads(self, kind: str) -> list[dict]:
        return [payload for event, payload in self.events if event == kind]


def without_seconds(epochs: list[Epoch]) -> list[Epoch]:
    return [dataclasses.replace(e, seconds=0.0) for e in epochs]


# ---------------------------------------------------------------------------------------------------------------
# Real runs
# ---------------------------------------------------------------------------------------------------------------


def test_a_short_real_run_learns(mnist):
    recorder = Recorder()
    result = train(LEARNS, mnist, recorder)
    assert result.status == "finished" and result.reason == ""
    assert len(result.epochs) == 1
    epoch = result.epochs[0]
    assert epoch.test_acc > 90.0, epoch  # on all 10,000 test images, after 79 steps on 5,000 images
    assert epoch.train_acc > 60.0
    assert epoch.test_loss < 0.5
    losses = [p["loss"] for p in recorder.payloads("batch")]
    assert len(losses) == 79  # ceil(5000 / 64)
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10
    assert result.params == 6_616 and result.seconds > 0
    # The returned model is the trained one, left in eval mode: evaluating it again gives the epoch's numbers.
    assert not result.model.training
    test_loss, test_acc = evaluate(result.model, mnist.test_images, mnist.test_labels)
    assert test_acc == epoch.test_acc
    assert test_loss == pytest.approx(epoch.test_loss, rel=1e-5)


def test_runs_are_reproducible_for_a_seed_and_differ_between_seeds(small_mnist):
    a_batches, b_batches = Recorder(), Recorder()
    a = train(TINY, small_mnist, a_batches)
    b = train(TINY, small_mnist, b_batches)
    c = train(TINY.replace(train={"seed": 2}), small_mnist)
    assert a.status == b.status == c.status == "finished"
    assert len(a.epochs) == 2
    assert without_seconds(a.epochs) == without_seconds(b.epochs)
    assert [p["loss"] for p in a_batches.payloads("batch")] == [p["loss"] for p in b_batches.payloads("batch")]
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert without_seconds(a.epochs) != without_seconds(c.epochs)
    assert a.epochs[0].train_loss != c.epochs[0].train_loss


def test_the_callback_sees_start_batches_epochs_and_end(small_mnist):
    # 200 images in batches of 64: three full batches and a last one of 8. A step schedule halves the LR each epoch.
    cfg = get_preset("lean").config.replace(
        train={
            "subset": 200,
            "batch_size": 64,
            "epochs": 2,
            "lr": 0.02,
            "schedule": "step",
            "step_size": 1,
            "gamma": 0.5,
        }
    )
    recorder = Recorder()
    result = train(cfg, small_mnist, recorder)
    assert result.status == "finished"
    assert recorder.kinds() == ["start"] + ["batch"] * 4 + ["epoch"] + ["batch"] * 4 + ["epoch"] + ["end"]

    (start,) = recorder.payloads("start")
    assert start == {"params": 6_520, "epochs": 2, "batches": 4, "images": 200, "resumed": 0}

    batches = recorder.payloads("batch")
    assert all(set(p) == BATCH_KEYS for p in batches)
    assert [(p["epoch"], p["batch"]) for p in batches] == [(e, b) for e in (1, 2) for b in (1, 2, 3, 4)]
    assert all(
        p["batches"] == 4 and math.isfinite(p["loss"]) and p["loss"] > 0 and p["images_per_s"] > 0 for p in batches
    )
    assert [p["lr"] for p in batches] == pytest.approx([0.02] * 4 + [0.01] * 4)

    epochs = recorder.payloads("epoch")
    assert [set(p) for p in epochs] == [set(EPOCH_KEYS)] * 2
    assert epochs == [epoch.to_dict() for epoch in result.epochs]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert [e["lr"] for e in epochs] == pytest.approx([0.02, 0.01])
    for epoch in (1, 2):
        losses = [p["loss"] for p in batches if p["epoch"] == epoch]
        # The epoch's train loss weighs each batch by its size: 64, 64, 64 and 8 images.
        expected = (64 * sum(losses[:3]) + 8 * losses[3]) / 200
        assert epochs[epoch - 1]["train_loss"] == pytest.approx(expected, rel=1e-6)
        assert (epochs[epoch - 1]["train_acc"] * 2) % 1 == pytest.approx(0, abs=1e-9)  # correct / 200 * 100
        assert 0 <= epochs[epoch - 1]["test_acc"] <= 100 and epochs[epoch - 1]["seconds"] > 0

    assert recorder.events[-1] == ("end", {"status": "finished", "reason": ""})
    record = result.record().to_dict()
    assert json.loads(json.dumps(record)) == record
    assert RunConfig.from_dict(record["config"]) == cfg
    assert (record["status"], record["params"], record["epochs"]) == ("finished", 6_520, epochs)
    assert RunRecord.from_dict(record).epochs == tuple(result.epochs)  # the epochs come back exactly


def test_stop_from_the_callback_ends_the_run_within_a_batch(small_mnist):
    stop = threading.Event()
    cfg = TINY.replace(train={"subset": 640, "epochs": 1})  # 10 batches

    def at_batch(payload):
        if payload["batch"] == 3:
            stop.set()

    recorder = Recorder(at_batch)
    result = train(cfg, small_mnist, recorder, stop)
    assert result.status == "stopped"
    assert result.reason == "stopped during epoch 1"
    seen = [p["batch"] for p in recorder.payloads("batch")]
    assert seen == [1, 2, 3], "no batch may run after the one that set the event"
    assert max(seen) <= 4
    assert result.epochs == [] and recorder.payloads("epoch") == []
    assert recorder.events[-1] == ("end", {"status": "stopped", "reason": "stopped during epoch 1"})


def test_a_stop_set_before_the_run_trains_nothing(small_mnist):
    stop = threading.Event()
    stop.set()
    recorder = Recorder()
    result = train(TINY, small_mnist, recorder, stop)
    assert result.status == "stopped"
    assert recorder.kinds() == ["start", "end"]


@pytest.mark.parametrize(
    "losses, first_bad",
    [
        ([2.31, 2.30, 2.29, 1.2, 0.4], None),  # learning
        ([2.31, 8.4, 6.7, 2.3, 2.3], None),  # a spike well inside the bound
        ([2.31, 2.3, 2.56e6, 4.95e11, 1.17e34, 2.3], 2),  # SGD at lr 1: blown up, then dead at chance
        ([2.31, 3.38e6, 3.69e3, 2.3, 4.9e3, 2.3], 1),  # Adam at lr 1: spikes between chance
        ([2.31, math.nan], 1),
        ([2.31, math.inf], 1),
        ([2.31, 999.0, 1000.0], None),  # the bound itself is not past it
        ([2.31, 1000.5], 1),
    ],
)
def test_divergence_is_a_non_finite_loss_or_one_past_the_bound(losses, first_bad):
    bad = [i for i, loss in enumerate(losses) if train_module.diverged(loss)]
    assert (bad[0] if bad else None) == first_bad


@pytest.mark.parametrize("bad", [math.nan, math.inf, 5e4])
def test_a_diverging_loss_fails_the_run_naming_the_control_to_change(small_mnist, monkeypatch, bad):
    # A loss made bad at the third training batch exercises the check whatever the hardware's rounding.
    real_loss = train_module.loss_fn
    calls = []

    def diverging(scores, labels, log_softmax, reduction="mean"):
        loss = real_loss(scores, labels, log_softmax, reduction)
        if reduction == "mean":
            calls.append(1)
            if len(calls) >= 3:
                return loss * 0 + bad
        return loss

    monkeypatch.setattr(train_module, "loss_fn", diverging)
    recorder = Recorder()
    result = train(TINY, small_mnist, recorder)
    assert result.status == "failed"
    seen = f"became {bad}" if bad != 5e4 else "exploded to 5e+04 (a learning run stays near 2.3)"
    assert result.reason.startswith(f"the run diverged: the loss {seen} in epoch 1, batch 3: "), result.reason
    assert "lower the Learning rate (now 0.05), e.g. to 0.005" in result.reason
    assert "Batch norm" not in result.reason  # the quick demo has it already
    assert [p["batch"] for p in recorder.payloads("batch")] == [1, 2]
    assert result.epochs == []
    assert recorder.events[-1] == ("end", {"status": "failed", "reason": result.reason})


def test_the_divergence_fix_names_the_learning_rate_and_batch_norm_when_they_apply():
    lean = get_preset("lean").config.replace(train={"schedule": "step", "lr": 0.5})
    reason = train_module.divergence_reason(lean, 3.4e6, 2, 7)
    assert reason == (
        "the run diverged: the loss exploded to 3.4e+06 (a learning run stays near 2.3) in epoch 2, batch 7: "
        "lower the Learning rate (now 0.5), e.g. to 0.05, or turn on Batch norm on the Build page"
    )


def test_an_error_inside_the_run_fails_it_with_the_reason(small_mnist, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("augmentation exploded")

    monkeypatch.setattr(train_module, "augment_batch", broken)
    recorder = Recorder()
    result = train(TINY, small_mnist, recorder)
    assert (result.status, result.reason) == ("failed", "RuntimeError: augmentation exploded")
    assert recorder.kinds() == ["start", "end"]
    assert recorder.events[-1][1] == {"status": "failed", "reason": "RuntimeError: augmentation exploded"}
    assert result.model is not None and result.params == 6_616


def test_a_subset_larger_than_the_scarcest_class_times_ten_still_trains(mnist):
    # The first 2,000 training images hold only 172 eights and 180 fives: a stratified 1,990 must borrow from the
    # other classes, or the epoch runs out of images before its last batch (an empty batch has a NaN loss).
    first = Mnist(
        mnist.train_images[:2000], mnist.train_labels[:2000], mnist.test_images[:200], mnist.test_labels[:200]
    )
    assert min(first.train_labels.bincount().tolist()) < 199
    cfg = get_preset("lean").config.replace(train={"subset": 1990, "batch_size": 64, "epochs": 1})
    recorder = Recorder()
    result = train(cfg, first, recorder)
    assert result.status == "finished", result.reason
    assert recorder.payloads("start")[0]["images"] == 1990
    assert len(recorder.payloads("batch")) == 32  # ceil(1990 / 64); 1,927 images would leave the 32nd empty


# ---------------------------------------------------------------------------------------------------------------
# Pieces
# ---------------------------------------------------------------------------------------------------------------


def test_stratified_subset_takes_the_first_images_of_each_class_in_dataset_order(mnist):
    labels = mnist.train_labels
    for size, counts in [
        (10, [1] * 10),
        (1000, [100] * 10),
        (1005, [101] * 5 + [100] * 5),
        (6000, [600] * 10),
    ]:
        index = stratified_subset(labels, size)
        assert len(index) == size
        assert labels[index].bincount(minlength=10).tolist() == counts
        assert torch.equal(index, torch.sort(index).values) and len(set(index.tolist())) == size
        for c in range(10):
            assert torch.equal(index[labels[index] == c], torch.nonzero(labels == c).flatten()[: counts[c]])


def test_stratified_subset_on_hand_made_labels():
    labels = torch.tensor([3, 0, 0, 1, 3, 0, 1, 2, 2, 1] + list(range(10)))
    # size 12: 10 // 10 = 1 each, and classes 0 and 1 take one more.
    # Zeros at 1, 2; ones at 3, 6; the first two at 7; three at 0; classes 4-9 only at 14-19.
    index = stratified_subset(labels, 12)
    assert index.tolist() == [0, 1, 2, 3, 6, 7, 14, 15, 16, 17, 18, 19]


def test_stratified_subset_fills_up_from_classes_with_images_to_spare(mnist):
    labels = mnist.train_labels
    counts = labels.bincount().tolist()  # the fives are the scarcest class: 5,421
    for size in (54_220, 58_000, 60_000):
        index = stratified_subset(labels, size)
        assert len(index) == size and len(set(index.tolist())) == size
        per_class = labels[index].bincount(minlength=10).tolist()
        assert per_class[5] == min(counts[5], size)
        spare = [n for c, n in enumerate(per_class) if n < counts[c]]
        assert not spare or max(spare) - min(spare) <= 1, per_class  # as even as the classes allow
    assert len(stratified_subset(labels, 70_000)) == 60_000


def test_batches_per_epoch_counts_the_last_partial_batch():
    assert batches_per_epoch(TrainConfig(subset=1000, batch_size=128), 60_000) == 8
    assert batches_per_epoch(TrainConfig(subset=1024, batch_size=128), 60_000) == 8
    assert batches_per_epoch(TrainConfig(subset=0, batch_size=128), 60_000) == 469


def test_predict_gives_probabilities_and_evaluate_counts_correct_answers(small_mnist):
    model = train(TINY.replace(train={"epochs": 1}), small_mnist).model
    images, labels = small_mnist.test_images[:300], small_mnist.test_labels[:300]
    probs = predict(model, images)
    assert probs.shape == (300, 10)
    torch.testing.assert_close(probs.sum(1), torch.ones(300))
    loss, acc = evaluate(model, images, labels)
    assert acc == pytest.approx(100.0 * (probs.argmax(1) == labels).sum().item() / 300)
    assert loss == pytest.approx(-probs[torch.arange(300), labels].log().mean().item(), rel=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# Learning-rate schedules
# ---------------------------------------------------------------------------------------------------------------


def test_lr_curve_none_is_flat():
    assert lr_curve(TrainConfig(epochs=3, lr=0.02, schedule="none"), 7) == [0.02] * 21


def test_lr_curve_step_decays_by_gamma_every_step_size_epochs():
    rates = lr_curve(TrainConfig(epochs=6, lr=0.1, schedule="step", step_size=2, gamma=0.5), 3)
    assert rates == pytest.approx([0.1] * 6 + [0.05] * 6 + [0.025] * 6)


def test_lr_curve_onecycle_peaks_at_max_lr_at_pct_start():
    cfg = TrainConfig(epochs=5, lr=0.01, schedule="onecycle", max_lr=0.1, pct_start=0.3)
    rates = lr_curve(cfg, 20)
    assert len(rates) == 100
    peak = max(range(100), key=rates.__getitem__)
    assert peak == 29  # OneCycleLR ends its warm-up at step pct_start * total - 1
    assert rates[peak] == pytest.approx(0.1)
    assert rates[0] == pytest.approx(0.1 / 25)  # starts at max_lr / div_factor
    assert rates[-1] < 1e-4
    assert all(a < b for a, b in zip(rates[:peak], rates[1 : peak + 1], strict=True))
    assert all(a > b for a, b in zip(rates[peak:-1], rates[peak + 1 :], strict=True))


def test_lr_curve_cosine_falls_from_lr_to_near_zero():
    rates = lr_curve(TrainConfig(epochs=4, lr=0.1, schedule="cosine"), 25)
    assert len(rates) == 100
    assert rates[0] == pytest.approx(0.1)
    assert rates[50] == pytest.approx(0.05)
    assert rates[-1] < 0.001 * 0.1
    assert all(a >= b for a, b in zip(rates[:-1], rates[1:], strict=True))


def test_lr_curve_plateau_is_drawn_flat():
    assert lr_curve(TrainConfig(epochs=6, lr=0.03, schedule="plateau", gamma=0.5), 4) == [0.03] * 24


def test_plateau_schedule_decays_when_the_test_loss_stops_improving():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    schedule = Schedule(optimizer, TrainConfig(schedule="plateau", gamma=0.5, lr=0.1), 10)
    for loss in (1.0, 0.9, 0.8):
        schedule.after_batch()
        schedule.after_epoch(loss)
    assert schedule.lr == pytest.approx(0.1)
    schedule.after_epoch(0.8)  # one bad epoch: patience 1 waits
    assert schedule.lr == pytest.approx(0.1)
    schedule.after_epoch(0.8)  # two: decay by gamma
    assert schedule.lr == pytest.approx(0.05)


@pytest.mark.parametrize(
    "train_settings",
    [
        {"schedule": "onecycle"},
        {"schedule": "step", "step_size": 1, "gamma": 0.5},
        {"optimizer": "adam", "schedule": "plateau"},
        {"schedule": "cosine"},
    ],
)
def test_a_run_paused_after_every_epoch_and_resumed_from_bytes_computes_the_same_bits(
    small_mnist, one_torch_thread, train_settings
):
    # The final step has batch norm, dropout and augmentation: every random generator and running statistic counts.
    cfg = get_preset("final").config.replace(train={"subset": 512, "epochs": 3, **train_settings})
    alone = train(cfg, small_mnist)
    recorder = Recorder()
    result, parts = train(cfg, small_mnist, recorder, pause=lambda: True), 1
    while result.status == "paused":
        assert len(result.epochs) == parts and result.model is not None
        checkpoint = Checkpoint.from_bytes(result.checkpoint.to_bytes())
        result, parts = train(cfg, small_mnist, recorder, pause=lambda: True, resume=checkpoint), parts + 1
    assert (result.status, parts) == ("finished", 3)  # never paused after the last epoch
    assert [p["resumed"] for p in recorder.payloads("start")] == [0, 1, 2]
    untimed = [dataclasses.replace(e, seconds=0.0) for e in result.epochs]
    assert untimed == [dataclasses.replace(e, seconds=0.0) for e in alone.epochs]
    for mine, theirs in zip(result.model.state_dict().values(), alone.model.state_dict().values(), strict=True):
        assert torch.equal(mine, theirs)


def test_a_damaged_or_foreign_checkpoint_is_refused_with_why(small_mnist):
    result = train(TINY, small_mnist, pause=lambda: True)
    blob = result.checkpoint.to_bytes()
    with pytest.raises(ValueError, match="cut short"):
        Checkpoint.from_bytes(blob[:-10])
    with pytest.raises(ValueError, match="not a checkpoint"):
        Checkpoint.from_bytes(len(b"hello").to_bytes(4, "little") + b"hello")
    older = blob.replace(b'"format", 1', b'"format", 0', 1)
    assert older != blob
    with pytest.raises(ValueError, match="a checkpoint of format 0; this version reads format 1"):
        Checkpoint.from_bytes(older)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU: the run trains on it")
def test_asking_for_a_gpu_where_there_is_none_fails_the_run_saying_what_to_choose(small_mnist):
    result = train(TINY.replace(train={"device": "cuda"}), small_mnist)
    assert (result.status, result.epochs) == ("failed", [])
    assert result.reason == "the Device setting asks for cuda, but this machine has no CUDA GPU: choose auto or cpu"
    assert train_module.device_type("auto") == "cpu" and train_module.device_type("cpu") == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine: the GPU path is not run")
def test_a_run_on_the_gpu_trains_pauses_and_resumes_there_and_hands_back_a_cpu_model(small_mnist):
    cfg = TINY.replace(train={"device": "cuda", "epochs": 3})
    alone = train(cfg, small_mnist)
    assert alone.status == "finished" and next(alone.model.parameters()).device.type == "cpu"
    paused = train(cfg, small_mnist, pause=lambda: True)
    resumed = train(cfg, small_mnist, resume=Checkpoint.from_bytes(paused.checkpoint.to_bytes()))
    assert [e.test_acc for e in resumed.epochs] == [e.test_acc for e in alone.epochs]
