"""The training loop. Nothing here knows about the UI: it reports through a callback and stops on an Event."""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from drill.augment import augment_batch
from drill.checkpoint import Checkpoint
from drill.config import TRAIN_SIZE, RunConfig, TrainConfig
from drill.data import MNIST_MEAN, MNIST_STD, Mnist
from drill.model import build_model, count_params, inference_copy, set_generator
from drill.run_record import Epoch, RunRecord, Status
from drill.stack import NUM_CLASSES

log = logging.getLogger(__name__)

Callback = Callable[[str, dict], None]
EVAL_BATCH = 250  # small enough that each layer's activations stay in cache
# Cross-entropy over 10 classes starts near ln 10 = 2.3 (a uniform guess), and a run that learns only lowers it. A
# batch whose mean loss passes 1,000 (430x chance) gives the right class e^-1000 of the probability: its logits are
# thousands apart, which only weights that have blown up produce. Such runs do not come back to learning: measured
# here, SGD at lr 1 with momentum 0.99 went 2.6e6, 5e11, 1e34 and then sat at 2.30 (dead ReLUs, chance) without ever
# reaching NaN on one thread, and Adam at lr 1 alternates spikes with 2.30 (3.4e6, 3.7e3, 2.3, 4.9e3, 2.3). So one
# batch past the bound is enough, and waiting for a NaN (or for several bad batches in a row) would call such runs
# "finished". The bound sits orders of magnitude from both a learning run and a blown-up one, so rounding, which
# differs between CPUs by parts in a million, cannot move a run across it.
DIVERGED_LOSS = 1000.0


@dataclass
class RunResult:
    """What a training produced, filled in as it goes: its status, every epoch's metrics and the trained model."""

    config: RunConfig
    status: Status  # finished, stopped, failed, or paused (between epochs, to go on from checkpoint)
    params: int
    reason: str = ""  # why it stopped or failed; "" when it finished
    epochs: list[Epoch] = field(default_factory=list)
    seconds: float = 0.0
    model: nn.Module | None = None
    checkpoint: Checkpoint | None = None  # set when paused

    def record(self, label: str = "") -> RunRecord:
        """The run's record, e.g. for `train --out` or the pack."""
        return RunRecord.of(self, label)


def device_type(name: str) -> str:
    """The device type a run's `device` setting gives in this process: "cuda" or "cpu"."""
    return "cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu"


def stratified_subset(labels: torch.Tensor, size: int) -> torch.Tensor:
    """Indices of the first images of each class, `size` in all with classes as even as possible, in dataset order."""
    by_class = [torch.nonzero(labels == c).flatten() for c in range(NUM_CLASSES)]
    per_class = [0] * NUM_CLASSES
    remaining = min(size, sum(len(indices) for indices in by_class))
    # Share what is left among the classes with images to spare; a class that runs out (MNIST has only 5,421
    # fives) leaves its share to the others, so a large subset still holds `size` images.
    while remaining:
        open_classes = [c for c in range(NUM_CLASSES) if per_class[c] < len(by_class[c])]
        share, extra = divmod(remaining, len(open_classes))
        for place, c in enumerate(open_classes):
            take = min(len(by_class[c]) - per_class[c], share + (1 if place < extra else 0))
            per_class[c] += take
            remaining -= take
    chosen = [indices[:n] for indices, n in zip(by_class, per_class, strict=True)]
    return torch.sort(torch.cat(chosen)).values


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 28, 28] -> float [N, 1, 28, 28] in [0, 1]."""
    return images.unsqueeze(1).float().div_(255.0)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Standardise [0, 1] pixels with MNIST's mean and std, as the seeds' Normalize((0.1307,), (0.3081,)) does."""
    return (x - MNIST_MEAN) / MNIST_STD


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer the config names."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


class Schedule:
    """The LR schedule, stepped per batch or per epoch as each scheduler expects."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainConfig, batches_per_epoch: int):
        total = cfg.epochs * batches_per_epoch
        sched = torch.optim.lr_scheduler
        self.per_batch = cfg.schedule in ("onecycle", "cosine")
        self.optimizer = optimizer
        self.scheduler = {
            "none": None,
            "step": lambda: sched.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma),
            "onecycle": lambda: sched.OneCycleLR(
                optimizer, max_lr=cfg.max_lr, total_steps=total, pct_start=cfg.pct_start
            ),
            "plateau": lambda: sched.ReduceLROnPlateau(optimizer, mode="min", factor=cfg.gamma, patience=1),
            "cosine": lambda: sched.CosineAnnealingLR(optimizer, T_max=total),
        }[cfg.schedule]
        self.scheduler = self.scheduler() if self.scheduler else None

    @property
    def lr(self) -> float:
        """The learning rate in force now."""
        return self.optimizer.param_groups[0]["lr"]

    def after_batch(self) -> None:
        """Advance a per-batch schedule."""
        if self.scheduler is not None and self.per_batch:
            self.scheduler.step()

    def after_epoch(self, test_loss: float) -> None:
        """Advance a per-epoch schedule (ReduceLROnPlateau watches the test loss)."""
        if self.scheduler is None or self.per_batch:
            return
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(test_loss)
        else:
            self.scheduler.step()


def lr_curve(cfg: TrainConfig, batches_per_epoch: int) -> list[float]:
    """The learning rate at every optimizer step of a run (for the schedule plot); plateau is drawn as flat."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    schedule = Schedule(optimizer, cfg, batches_per_epoch)
    rates = []
    for _ in range(cfg.epochs):
        for _ in range(batches_per_epoch):
            rates.append(schedule.lr)
            optimizer.step()
            schedule.after_batch()
        if cfg.schedule != "plateau":  # it reacts to test losses no plot can know (a flat 1.0 would decay it)
            schedule.after_epoch(test_loss=1.0)
    return rates


def batches_per_epoch(cfg: TrainConfig, train_size: int) -> int:
    """Optimizer steps in one epoch (the last, partial batch included)."""
    images = cfg.subset or train_size
    return math.ceil(images / cfg.batch_size)


def loss_fn(scores: torch.Tensor, labels: torch.Tensor, log_softmax: bool, reduction: str = "mean") -> torch.Tensor:
    """NLL on log-probabilities, or cross-entropy on logits."""
    return (F.nll_loss if log_softmax else F.cross_entropy)(scores, labels, reduction=reduction)


def diverged(loss: float) -> bool:
    """Whether one batch's mean loss shows the run has blown up: not finite, or past DIVERGED_LOSS."""
    return not math.isfinite(loss) or loss > DIVERGED_LOSS


def divergence_reason(cfg: RunConfig, loss: float, epoch: int, batch: int) -> str:
    """Why a diverged run failed, in the Train page's words, with what to change."""
    tc = cfg.train
    label, rate = ("Peak LR (max_lr)", tc.max_lr) if tc.schedule == "onecycle" else ("Learning rate", tc.lr)
    seen = f"became {loss}" if not math.isfinite(loss) else f"exploded to {loss:.3g} (a learning run stays near 2.3)"
    fix = f"lower the {label} (now {rate:.3g}), e.g. to {rate / 10:.3g}"
    if cfg.model.batch_norm == "off":
        fix += ", or turn on Batch norm on the Build page"
    return f"the run diverged: the loss {seen} in epoch {epoch}, batch {batch}: {fix}"


def _batches(model: nn.Module, images: torch.Tensor):
    """(start, scores on the CPU) per evaluation batch of uint8 images, through the model's fast inference copy, on
    the model's device."""
    device = next(model.parameters()).device
    fast = inference_copy(model).to(device)
    for begin in range(0, len(images), EVAL_BATCH):
        x = normalize(to_input(images[begin : begin + EVAL_BATCH])).to(device)
        yield begin, fast(x.contiguous(memory_format=fast.input_format)).cpu()


@torch.inference_mode()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(mean loss, accuracy in %) of the model on uint8 images."""
    total_loss, correct = 0.0, 0
    for begin, scores in _batches(model, images):
        target = labels[begin : begin + EVAL_BATCH]
        total_loss += loss_fn(scores, target, model.cfg.log_softmax, reduction="sum").item()
        correct += (scores.argmax(1) == target).sum().item()
    return total_loss / len(images), 100.0 * correct / len(images)


@torch.inference_mode()
def predict(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Class probabilities [N, 10] for uint8 images."""
    parts = [scores.exp() if model.cfg.log_softmax else scores.softmax(1) for _, scores in _batches(model, images)]
    return torch.cat(parts)


def train(
    cfg: RunConfig,
    data: Mnist,
    callback: Callback | None = None,
    stop: threading.Event | None = None,
    threads: int | None = None,
    pause: Callable[[], bool] | None = None,
    resume: Checkpoint | None = None,
    checkpoints: bool = False,
) -> RunResult:
    """Train a model for cfg on data; report through callback(event, payload); stop within a batch of `stop` being set.

    Between two epochs the loop asks pause(); on True it ends "paused" with a checkpoint, and a later train(...,
    resume=that checkpoint) goes on from there, computing exactly what an unpaused run computes (the same thread
    count gives the same bits). With checkpoints, every epoch but the last is followed by a "checkpoint" event
    {epoch, blob}: the checkpoint's bytes, for a store that lets the run survive its server.

    Events: "start" {params, epochs, batches, images, resumed}; "batch" {epoch, batch, batches, loss, lr,
    images_per_s}; "epoch" Epoch.to_dict(); "checkpoint" {epoch, blob}; "end" {status, reason}.
    """
    report = callback or (lambda event, payload: None)
    stop = stop or threading.Event()
    # The caller's count (the job scheduler's share of the cores) wins: a shared link must not oversubscribe a server.
    threads = threads or cfg.train.threads
    if threads:
        # set_num_threads sets the calling thread's OpenMP pool, so concurrent runs each keep their own count.
        torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(cfg.train.seed)
    model = build_model(cfg.model, seed=cfg.train.seed)
    set_generator(model, generator)
    result = RunResult(config=cfg, status=Status.FAILED, params=count_params(model), model=model)
    device = device_type(cfg.train.device)
    if device == "cuda" and not torch.cuda.is_available():
        result.reason = "the Device setting asks for cuda, but this machine has no CUDA GPU: choose auto or cpu"
        report("end", {"status": result.status, "reason": result.reason})
        return result
    generators = [generator]
    if device == "cuda":
        # Dropout's masks are drawn where the activations are; the order, augmentation and initialisation stay on
        # the CPU generator, so a run's data is the same on either device.
        model.to(device)
        generators.append(torch.Generator(device).manual_seed(cfg.train.seed))
        set_generator(model, generators[-1])
    started, before = time.perf_counter(), resume.seconds if resume else 0.0

    def clock() -> float:
        return time.perf_counter() - started + before  # training seconds, those before a pause included

    try:
        _run(cfg, data, model, generators, report, stop, pause or (lambda: False), resume, checkpoints, clock, result)
    except Exception as error:  # a run must end with a reason the student can read, whatever went wrong
        log.exception("run failed")
        result.status, result.reason = Status.FAILED, f"{type(error).__name__}: {error}"
    result.seconds = clock()
    model.cpu().eval()  # what comes after (the store, Inspect, predictions) works on the CPU
    report("end", {"status": result.status, "reason": result.reason})
    return result


def _run(cfg, data, model, generators, report, stop, pause, resume, checkpoints, clock, result) -> None:
    """The epochs of one run (from the checkpoint's next one, when resuming); fills result in place."""
    tc = cfg.train
    generator, device = generators[0], next(model.parameters()).device
    if tc.subset:
        index = stratified_subset(data.train_labels, tc.subset)
        images, labels = data.train_images[index], data.train_labels[index]
    else:
        images, labels = data.train_images, data.train_labels
    batches = math.ceil(len(images) / tc.batch_size)
    optimizer = make_optimizer(model.parameters(), tc)
    schedule = Schedule(optimizer, tc, batches)
    if resume is not None:
        if RunConfig.from_dict(resume.config).replace(train={"threads": 0}) != cfg.replace(train={"threads": 0}):
            raise ValueError("the checkpoint is of another config, so this run cannot go on from it")
        _restore(resume, model, optimizer, schedule, generators)
        result.epochs = list(resume.epochs)
    done = len(result.epochs)
    report(
        "start",
        {"params": result.params, "epochs": tc.epochs, "batches": batches, "images": len(images), "resumed": done},
    )
    for epoch in range(done + 1, tc.epochs + 1):
        model.train()
        epoch_start = time.perf_counter()
        lr = schedule.lr
        order = torch.randperm(len(images), generator=generator)
        loss_sum, correct, seen = 0.0, 0, 0
        for batch in range(batches):
            if stop.is_set():
                result.status, result.reason = Status.STOPPED, f"stopped during epoch {epoch}"
                return
            index = order[batch * tc.batch_size : (batch + 1) * tc.batch_size]
            x = augment_batch(to_input(images[index]), cfg.augment, generator)
            target = labels[index].to(device)
            scores = model(normalize(x).to(device))
            loss = loss_fn(scores, target, cfg.model.log_softmax)
            loss_value = loss.item()
            if diverged(loss_value):
                result.status, result.reason = Status.FAILED, divergence_reason(cfg, loss_value, epoch, batch + 1)
                return
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.after_batch()
            loss_sum += loss_value * len(index)
            correct += (scores.argmax(1) == target).sum().item()
            seen += len(index)
            elapsed = time.perf_counter() - epoch_start
            report(
                "batch",
                {
                    "epoch": epoch,
                    "batch": batch + 1,
                    "batches": batches,
                    "loss": loss_value,
                    "lr": schedule.lr,
                    "images_per_s": seen / max(elapsed, 1e-9),
                },
            )
        train_seconds = time.perf_counter() - epoch_start
        test_loss, test_acc = evaluate(model, data.test_images, data.test_labels)
        stats = Epoch(
            epoch=epoch,
            train_loss=loss_sum / seen,
            train_acc=100.0 * correct / seen,
            test_loss=test_loss,
            test_acc=test_acc,
            lr=lr,
            seconds=train_seconds,
        )
        result.epochs.append(stats)
        report("epoch", stats.to_dict())
        schedule.after_epoch(test_loss)
        if epoch == tc.epochs:
            break
        pausing = pause()
        if checkpoints or pausing:
            state = _state(model, optimizer, schedule, generators)
            checkpoint = Checkpoint(epochs=tuple(result.epochs), seconds=clock(), state=state, config=cfg.to_dict())
        if checkpoints:
            report("checkpoint", {"epoch": epoch, "blob": checkpoint.to_bytes()})
        if pausing:
            result.status, result.checkpoint = Status.PAUSED, checkpoint
            return
    result.status = Status.FINISHED


def _state(model, optimizer, schedule, generators) -> dict:
    """Every piece of training state that the next epoch reads."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.scheduler.state_dict() if schedule.scheduler is not None else None,
        # On the CPU one generator draws the training order, the augmentation and the dropout masks; on a GPU the
        # masks come from a second one there.
        "generators": [g.get_state() for g in generators],
    }


def _restore(checkpoint: Checkpoint, model, optimizer, schedule, generators) -> None:
    """Put a checkpoint's state back (the inverse of _state)."""
    state = checkpoint.state
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if schedule.scheduler is not None:
        schedule.scheduler.load_state_dict(state["schedule"])
    for generator, saved in zip(generators, state["generators"], strict=True):
        generator.set_state(saved)


LR_POINTS_PER_EPOCH = 40  # the LR plot samples each epoch this often: the curve's shape, at a fraction of the cost


@functools.lru_cache(maxsize=128)
def lr_points(cfg: TrainConfig) -> tuple[list[float], int]:
    """(learning rates, points per epoch) for the LR plot; sampled, since stepping a real scheduler is slow."""
    points = min(batches_per_epoch(cfg, TRAIN_SIZE), LR_POINTS_PER_EPOCH)
    return lr_curve(cfg, points), points
