"""Side-by-side epoch timing: the seeds' pipeline (torchvision dataset + PIL transforms + DataLoader) vs drill's."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import torch

from drill.config import RunConfig
from drill.data import MNIST_MEAN, MNIST_STD, Mnist
from drill.model import build_model
from drill.train import loss_fn, make_optimizer, stratified_subset, train


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
    if result.status != "finished":
        raise RuntimeError(f"the drill run {result.status}: {result.reason}")
    return result.epochs[0]["seconds"]
