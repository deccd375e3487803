"""Side-by-side epoch timing: the seeds' pipeline (torchvision dataset + PIL transforms + DataLoader) vs drill's."""

from __future__ import annotations

import statistics
import struct
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from drill.config import RunConfig
from drill.data import MNIST_MEAN, MNIST_STD, Mnist
from drill.jobs import JobManager
from drill.model import build_model, set_generator
from drill.run_record import ACTIVE, Status
from drill.train import evaluate, loss_fn, make_optimizer, stratified_subset, train


def write_idx_files(data: Mnist, root: Path) -> Path:
    """Write MNIST as the raw idx files torchvision.datasets.MNIST reads, so its dataset class runs offline."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    parts = {
        "train-images-idx3-ubyte": data.train_images,
        "train-labels-idx1-ubyte": data.train_labels,
        "t10k-images-idx3-ubyte": data.test_images,
        "t10k-labels-idx1-ubyte": data.test_labels,
    }
    for name, tensor in parts.items():
        path = raw / name
        if path.exists():
            continue
        # idx header: magic (0x0000, type 0x08 = ubyte, number of dims), then each dim as big-endian int32.
        header = struct.pack(">HBB", 0, 8, tensor.dim()) + b"".join(struct.pack(">I", d) for d in tensor.shape)
        path.write_bytes(header + tensor.to(torch.uint8).numpy().tobytes())
    return root


def seeds_epoch(cfg: RunConfig, data: Mnist, root: Path, workers: int = 2) -> float:
    """Seconds for one training epoch the way the seed notebooks train: PIL transforms per image in a DataLoader.

    Trains on the same images as drill's loop: all of them, or the config's stratified subset.
    """
    from torchvision import datasets, transforms

    transform = transforms.Compose(
        [
            transforms.RandomRotation((-cfg.augment.rotation, cfg.augment.rotation), fill=(0,)),
            transforms.ToTensor(),
            transforms.Normalize((MNIST_MEAN,), (MNIST_STD,)),
        ]
    )
    dataset = datasets.MNIST(write_idx_files(data, root), train=True, download=False, transform=transform)
    if cfg.train.subset:
        dataset = torch.utils.data.Subset(dataset, stratified_subset(data.train_labels, cfg.train.subset).tolist())
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.train.batch_size, shuffle=True, num_workers=workers)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, seed=cfg.train.seed)
    optimizer = make_optimizer(model.parameters(), cfg.train)
    model.train()
    started = time.perf_counter()
    for images, labels in loader:
        loss = loss_fn(model(images), labels, cfg.model.log_softmax)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def drill_epoch(cfg: RunConfig, data: Mnist) -> float:
    """Seconds for one training epoch through drill's own loop (the test pass excluded)."""
    result = train(cfg.replace(train={"epochs": 1}), data)
    if result.status != Status.FINISHED:
        raise RuntimeError(f"the drill run {result.status}: {result.reason}")
    return result.epochs[0].seconds


def eval_seconds(cfg: RunConfig, data: Mnist, repeats: int = 5) -> float:
    """Median seconds to evaluate a freshly built model of cfg on the 10,000 test images."""
    model = build_model(cfg.model, seed=cfg.train.seed)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        evaluate(model, data.test_images, data.test_labels)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def first_point_seconds(cfg: RunConfig, data: Mnist) -> float:
    """Seconds from Start to the first test-accuracy point: building the model, epoch 1 and its test pass."""
    stop = threading.Event()
    first: list[float] = []
    started = time.perf_counter()

    def on_event(event: str, payload: dict) -> None:
        if event == "epoch":
            first.append(time.perf_counter() - started)
            stop.set()

    train(cfg, data, on_event, stop)
    if not first:
        raise RuntimeError("the run ended before its first epoch")
    return first[0]


def throughput(cfg: RunConfig, data: Mnist, jobs: int) -> float:
    """Training images per second of `jobs` one-epoch runs side by side, scheduled by the app's JobManager.

    The manager gives each run its share of the cores, as it does for a class; the wall time includes each run's
    test pass, so this is what students see.
    """
    manager = JobManager(max_running=jobs, data=lambda: data)
    one_epoch = cfg.replace(train={"epochs": 1})
    started = time.perf_counter()
    submitted = [manager.submit("bench", one_epoch.replace(train={"seed": seed})) for seed in range(1, jobs + 1)]
    for job in submitted:
        while job.snapshot().status in ACTIVE:
            manager.touch("bench")
            time.sleep(0.05)
    elapsed = time.perf_counter() - started
    failed = [job.snapshot() for job in submitted if job.snapshot().status != Status.FINISHED]
    if failed:
        raise RuntimeError(f"a bench run {failed[0].status}: {failed[0].reason}")
    return jobs * (cfg.train.subset or len(data.train_labels)) / elapsed


@dataclass(frozen=True)
class StepProfile:
    """Where a training step's time goes."""

    median_ms: float  # a whole step (forward, backward, optimizer), median over the timed steps
    conv_ms: float  # of which the convolutions, forward and backward, mean per step under the profiler
    table: str  # the torch profiler's table of the ops that took the time


def timed_step(model, optimizer, x: torch.Tensor, y: torch.Tensor, log_softmax: bool) -> float:
    """Seconds for one forward, backward and optimizer step."""
    started = time.perf_counter()
    loss = loss_fn(model(x), y, log_softmax)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - started


def step_profile(cfg: RunConfig, steps: int = 20, rows: int = 12) -> StepProfile:
    """Time the network's forward, backward and optimizer step alone, on random inputs of the config's batch size."""
    from torch.profiler import profile

    generator = torch.Generator().manual_seed(cfg.train.seed)
    model = build_model(cfg.model, seed=cfg.train.seed)
    set_generator(model, generator)
    optimizer = make_optimizer(model.parameters(), cfg.train)
    x = torch.randn(cfg.train.batch_size, 1, 28, 28, generator=generator)
    y = torch.randint(0, 10, (cfg.train.batch_size,), generator=generator)

    def step() -> float:
        return timed_step(model, optimizer, x, y, cfg.model.log_softmax)

    for _ in range(3):
        step()
    median_ms = statistics.median(step() for _ in range(steps)) * 1000
    with profile() as prof:
        for _ in range(steps):
            step()
    ops = prof.key_averages()
    # Self time, so the wrappers (aten::convolution, aten::_convolution) do not count their kernels twice.
    conv_us = sum(op.self_cpu_time_total for op in ops if "convolution" in op.key)
    return StepProfile(median_ms, conv_us / 1000 / steps, ops.table(sort_by="self_cpu_time_total", row_limit=rows))


@contextmanager
def busy_threads(count: int, work_ms: float, period_s: float):
    """`count` Python threads that each run pure-Python work for work_ms every period_s, staggered: a class's
    ScriptRunner threads redrawing their pages, without Streamlit."""
    stop = threading.Event()

    def spin(offset: float) -> None:
        stop.wait(offset)
        while not stop.is_set():
            end = time.perf_counter() + work_ms / 1000
            while time.perf_counter() < end:
                sum(range(200))
            stop.wait(period_s)

    threads = [threading.Thread(target=spin, args=(period_s * i / max(count, 1),), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def epoch_on_backend(cfg: RunConfig, backend) -> float:
    """Training seconds of a one-epoch run of cfg through a JobManager on the backend (its worker warmed first)."""
    manager = JobManager(backend=backend)
    one_epoch = cfg.replace(train={"epochs": 1})
    try:
        # A short run first starts the worker and loads MNIST there, so the timed run measures training alone.
        for run in (one_epoch.replace(train={"seed": cfg.train.seed + 1000, "subset": 1000}), one_epoch):
            ticket = manager.submit("bench", run)
            while (snap := manager.snapshot(ticket.id)).status in ACTIVE:
                manager.touch("bench")
                time.sleep(0.05)
    finally:
        manager.shutdown(timeout=60)
    if snap.status != Status.FINISHED:
        raise RuntimeError(f"a bench run {snap.status}: {snap.reason}")
    return snap.epochs[0].seconds
