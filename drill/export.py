"""A run config -> the same experiment as one plain PyTorch + torchvision script a student can paste into Colab.

The script is the seeds' style (pytorch/examples mnist): torchvision's MNIST and PIL transforms, the network written
out layer by layer, a train and a test function, and a line per epoch. It is generated from the config alone, so it
trains the very network the lab built (the tests check the parameter count and the outputs match).
"""

from __future__ import annotations

import json
import re
import textwrap

from drill.config import RunConfig
from drill.data import MNIST_MEAN, MNIST_STD
from drill.model import build_model, count_params
from drill.presets import BY_NAME, matching_preset
from drill.stack import NUM_CLASSES, Block, Head, plan
from drill.summary import summarize


def script_filename(name: str | None) -> str:
    """A file name for the script of a preset (or of a custom config)."""
    slug = re.sub(r"[^a-z0-9]+", "_", (name or "custom").lower()).strip("_") or "custom"
    return f"drill_{slug}.py"


def named_script(cfg: RunConfig, run_name: str | None = None) -> tuple[str, str]:
    """(file name, script) for a config, titled after its preset when it is one; the file is named after the run
    (a run's script beside the current model's must not share its name), else after the preset."""
    preset = BY_NAME.get(matching_preset(cfg) or "")
    title = preset.title if preset else f"a custom drill-down step{f' ({run_name})' if run_name else ''}"
    return script_filename(run_name or (preset.name if preset else None)), pytorch_script(cfg, title)


def pytorch_script(cfg: RunConfig, title: str = "a custom drill-down step") -> str:
    """The full training script for cfg, as Python source."""
    params = count_params(build_model(cfg.model))
    config_json = json.dumps(cfg.to_dict(), indent=2, sort_keys=True)
    config_comment = "\n".join("# " + line for line in config_json.splitlines())
    epochs, seed = cfg.train.epochs, cfg.train.seed
    parts = [
        _HEADER.format(title=_one_line(title), params=params, config=config_comment),
        _network(cfg),
        _transforms(cfg),
        _SUBSET if cfg.train.subset else "",
        _optimizer(cfg),
        _LOOPS.format(
            loss="F.nll_loss" if cfg.model.log_softmax else "F.cross_entropy",
            on_output="log-probabilities" if cfg.model.log_softmax else "logits",
        ),
        _MAIN.format(epochs=epochs, seed=seed, batch=cfg.train.batch_size, subset=_subset_lines(cfg)),
    ]
    # Two blank lines between top-level definitions, as PEP 8 (and ruff format) lay them out.
    return "\n\n\n".join(part.strip("\n") for part in parts if part) + "\n"


def _one_line(text: str) -> str:
    """Text safe inside the script's docstring."""
    return " ".join(text.split()).replace('"""', "'''").replace("\\", "/")


_HEADER = '''
"""MNIST drill-down: {title} -- plain PyTorch + torchvision, exported from Drill-Down Lab.

Run it in Colab (a GPU runtime is used when there is one) or on a laptop:
    python this_script.py                               # full run; downloads MNIST into ./data
    python this_script.py --epochs 1 --max-batches 5    # a smoke test: 5 batches to train, 5 to test
The network has {params:,} trainable parameters, exactly as in the lab.
"""

# The lab's config for this run, as JSON (the lab's run export holds the same):
{config}

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision import datasets, transforms
'''


def _network(cfg: RunConfig) -> str:
    """The Net class, each block of the lab's plan written out with its output size, receptive field and parameter
    count."""
    model = cfg.model
    rows = {row.name: row for row in summarize(model).rows}
    built = plan(model)
    init_lines, forward_lines = [], []
    for block in built.blocks:
        layer, name = block.layer, block.name
        sizes = f"{block.in_size}x{block.in_size}x{block.in_channels} -> {block.out_size}x{block.out_size}x"
        parts = _block_parts(block)
        if layer.kind == "pool":
            rf = rows[name if len(parts) == 1 else f"{name}.pool"].rf
            init_lines.append(f"# {sizes}{block.out_channels}, RF {rf}")
        else:
            rf = rows[f"{name}.conv"].rf
            init_lines.append(f"# {sizes}{block.out_channels}, RF {rf}, {block.params:,} params")
        if len(parts) == 1:
            init_lines.append(f"self.{name} = {parts[0]}")
        else:
            init_lines += [f"self.{name} = nn.Sequential(", *("    " + part + "," for part in parts), ")"]
        forward_lines.append(f"x = self.{name}(x)")
    init_lines.extend(_head_lines(built.head))
    forward_lines.append("x = self.head(x)")
    forward_lines.append("return F.log_softmax(x, dim=1)" if model.log_softmax else "return x  # logits")
    init = textwrap.indent("\n".join(init_lines), " " * 8)
    forward = textwrap.indent("\n".join(forward_lines), " " * 8)
    norm = {
        "off": "no batch norm",
        "before_relu": "batch norm before each ReLU",
        "after_relu": "batch norm after each ReLU",
    }
    drop = f"{model.dropout_kind} dropout {model.dropout}" if model.dropout else "no dropout"
    summary = f"{norm[model.batch_norm]}, {drop}, head {model.head}"
    return f'''
class Net(nn.Module):
    """Stack {model.layers}: {summary} (unless a layer says otherwise)."""

    def __init__(self):
        super().__init__()
{init}

    def forward(self, x):
{forward}
'''


def _dropout(rate: float, kind: str) -> list[str]:
    return [f"nn.{'Dropout2d' if kind == 'channel' else 'Dropout'}({rate})"] if rate > 0 else []


def _block_parts(block: Block) -> list[str]:
    """A block's modules in the lab's order: conv, batch norm before or after the ReLU, dropout last; a pool and its
    dropout."""
    layer = block.layer
    if layer.kind == "pool":
        return ["nn.MaxPool2d(2, 2)" if layer.pool == "max" else "nn.AvgPool2d(2, 2)"] + _dropout(
            block.dropout, block.dropout_kind
        )
    shape = f"{block.in_channels}, {block.out_channels}, kernel_size={layer.kernel}, padding={layer.padding}"
    parts = [f"nn.Conv2d({shape}, bias={block.bias})"]
    norm = f"nn.BatchNorm2d({block.out_channels}{'' if layer.affine else ', affine=False'})"
    if block.bn == "before_relu":
        parts.append(norm)
    if layer.relu:
        parts.append("nn.ReLU()")
    if block.bn == "after_relu":
        parts.append(norm)
    return parts + _dropout(block.dropout, block.dropout_kind)


def _head_lines(head: Head) -> list[str]:
    """The classifier, written as the lab's head (same layers, same order, same parameters)."""
    gap = "nn.AdaptiveAvgPool2d(1)"
    to_classes = f"nn.Conv2d({head.in_channels}, {NUM_CLASSES}, kernel_size=1, bias={head.bias})"
    inputs = f"{head.in_channels} * {head.size} * {head.size}" if head.kind == "fc" else f"{head.in_channels}"
    widths = (inputs, *map(str, head.hidden))
    hidden = []
    for width_in, width in zip(widths, head.hidden, strict=False):
        hidden += [f"nn.Linear({width_in}, {width}, bias={head.bias})", "nn.ReLU()"]
        hidden += _dropout(head.hidden_dropout, "element")
    fc = f"nn.Linear({widths[-1]}, {NUM_CLASSES}, bias={head.bias})"
    through = f" through hidden layers of {', '.join(map(str, head.hidden))}" if head.hidden else ""
    parts, comment = {
        "fc": (
            ["nn.Flatten()", *hidden, fc],
            f"flatten the last map and fully connected layers{through} to the 10 digits",
        ),
        "gap_conv": ([gap, to_classes, "nn.Flatten()"], "global average pooling, then a 1x1 conv to the 10 digits"),
        "gap_linear": (
            [gap, "nn.Flatten()", *hidden, fc],
            f"global average pooling, then linear layers{through} to the 10 digits",
        ),
        "conv_gap": ([to_classes, gap, "nn.Flatten()"], "a 1x1 conv to the 10 digits, then global average pooling"),
        "none": (["nn.Flatten()"], "the last conv made the 10 outputs: flatten them"),
    }[head.kind]
    return [f"# head: {comment}", "self.head = nn.Sequential(", *("    " + part + "," for part in parts), ")"]


def _transforms(cfg: RunConfig) -> str:
    """torchvision transforms for the augmentations the config enables (PIL side, then tensor side)."""
    aug = cfg.augment
    pil, tensor = [], []
    fill = round(aug.fill * 255)
    geometric = aug.translate or aug.scale or aug.shear
    if geometric:
        args = [f"degrees={aug.rotation}"]
        if aug.translate:
            args.append(f"translate=({aug.translate}, {aug.translate})")
        if aug.scale:
            args.append(f"scale=({1 - aug.scale:.4g}, {1 + aug.scale:.4g})")
        if aug.shear:
            args.append(f"shear={aug.shear}")
        pil.append(f"transforms.RandomAffine({', '.join(args)},")
        pil.append(f"                        interpolation=BILINEAR, fill={fill}),")
    elif aug.rotation:
        pil.append(f"transforms.RandomRotation({aug.rotation}, interpolation=BILINEAR, fill={fill}),")
    if aug.brightness or aug.contrast:
        pil.append(f"transforms.ColorJitter(brightness={aug.brightness}, contrast={aug.contrast}),")
    if aug.erase_prob:
        # The lab erases a square of side erase_size/2..erase_size of the image: area fraction is the side squared.
        low, high = (aug.erase_size / 2) ** 2, aug.erase_size**2
        tensor.append("# Cutout on [0, 1] pixels, before Normalize, so the erased square is black like the background.")
        tensor.append(
            f"transforms.RandomErasing(p={aug.erase_prob}, scale=({low:.4g}, {high:.4g}), ratio=(1.0, 1.0), value=0),"
        )
    train_lines = [*pil, "transforms.ToTensor(),", *tensor, "transforms.Normalize((MNIST_MEAN,), (MNIST_STD,)),"]
    body = textwrap.indent("\n".join(train_lines), " " * 8)
    note = "no augmentation: the training images are only normalised" if not (pil or tensor) else "random augmentation"
    return f'''
MNIST_MEAN, MNIST_STD = {MNIST_MEAN}, {MNIST_STD}
BILINEAR = transforms.InterpolationMode.BILINEAR


def train_transform():
    """Training images: {note}."""
    return transforms.Compose([
{body}
    ])


def test_transform():
    """Test images are never augmented."""
    return transforms.Compose([transforms.ToTensor(), transforms.Normalize((MNIST_MEAN,), (MNIST_STD,))])
'''


_SUBSET = '''
def stratified_subset(targets, size):
    """Indices of the first images of each digit, `size` in all, digits as even as possible (as the lab picks them)."""
    by_digit = [torch.nonzero(targets == digit).flatten() for digit in range(10)]
    counts = [0] * 10
    remaining = min(size, len(targets))
    while remaining:  # a digit that runs out of images (there are only 5,421 fives) leaves its share to the others
        open_digits = [digit for digit in range(10) if counts[digit] < len(by_digit[digit])]
        share, extra = divmod(remaining, len(open_digits))
        for place, digit in enumerate(open_digits):
            take = min(len(by_digit[digit]) - counts[digit], share + (1 if place < extra else 0))
            counts[digit] += take
            remaining -= take
    return torch.sort(torch.cat([by_digit[digit][:counts[digit]] for digit in range(10)])).values.tolist()
'''


def _optimizer(cfg: RunConfig) -> str:
    """make_optimizer and make_scheduler for the config's optimizer and LR schedule."""
    t = cfg.train
    optimizer = {
        "sgd": f"torch.optim.SGD(model.parameters(), lr={t.lr}, momentum={t.momentum}, weight_decay={t.weight_decay})",
        "adam": f"torch.optim.Adam(model.parameters(), lr={t.lr}, weight_decay={t.weight_decay})",
        "adamw": f"torch.optim.AdamW(model.parameters(), lr={t.lr}, weight_decay={t.weight_decay})",
    }[t.optimizer]
    scheduler, when = {
        "none": ("None", "there is no schedule: the learning rate stays put"),
        "step": (
            f"torch.optim.lr_scheduler.StepLR(optimizer, step_size={t.step_size}, gamma={t.gamma})",
            "stepped once per epoch",
        ),
        "onecycle": (
            "# OneCycleLR divides by its warm-up length: a smoke test of a few batches still gets 20 steps.\n"
            "    total_steps = max(epochs * steps_per_epoch, 20)\n"
            f"    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr={t.max_lr}, "
            f"total_steps=total_steps, pct_start={t.pct_start})",
            "stepped after every batch",
        ),
        "plateau": (
            f"torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode='min', factor={t.gamma}, patience=1)",
            "stepped once per epoch with the test loss",
        ),
        "cosine": (
            "torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)",
            "stepped after every batch",
        ),
    }[t.schedule]
    per_batch = t.schedule in ("onecycle", "cosine")
    body = scheduler if scheduler.startswith("#") else f"return {scheduler}"
    return f'''
def make_optimizer(model):
    return {optimizer}


# Per-batch schedules step after every optimizer step; the others once per epoch.
SCHEDULE_PER_BATCH = {per_batch}


def make_scheduler(optimizer, epochs, steps_per_epoch):
    """The learning-rate schedule: {when}."""
    {body}
'''


_LOOPS = '''
def train(model, device, loader, optimizer, scheduler, max_batches):
    """One epoch; returns (mean loss, accuracy in %) over the images it trained on."""
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    for batch, (data, target) in enumerate(loader):
        if max_batches and batch >= max_batches:
            break
        data, target = data.to(device), target.to(device)
        optimizer.zero_grad()
        output = model(data)  # {on_output}
        loss = {loss}(output, target)
        loss.backward()
        optimizer.step()
        if scheduler is not None and SCHEDULE_PER_BATCH:
            scheduler.step()
        loss_sum += loss.item() * len(data)
        correct += (output.argmax(dim=1) == target).sum().item()
        seen += len(data)
    return loss_sum / seen, 100.0 * correct / seen


def test(model, device, loader, max_batches):
    """Evaluate; returns (mean loss, accuracy in %, correct, total)."""
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    with torch.no_grad():
        for batch, (data, target) in enumerate(loader):
            if max_batches and batch >= max_batches:
                break
            data, target = data.to(device), target.to(device)
            output = model(data)
            loss_sum += {loss}(output, target, reduction="sum").item()
            correct += (output.argmax(dim=1) == target).sum().item()
            seen += len(data)
    return loss_sum / seen, 100.0 * correct / seen, correct, seen
'''


def _subset_lines(cfg: RunConfig) -> str:
    """Cutting the training set down to the config's stratified subset, if it uses one."""
    if not cfg.train.subset:
        return ""
    n = cfg.train.subset
    return (
        f"    # The lab trained on a stratified subset: the first {n:,} images, digits as even as possible.\n"
        f"    train_set = torch.utils.data.Subset(train_set, stratified_subset(train_set.targets, {n}))\n"
    )


_MAIN = """
def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="./data", help="where MNIST is (or is downloaded to)")
    parser.add_argument("--epochs", type=int, default={epochs})
    parser.add_argument("--batch-size", type=int, default={batch})
    parser.add_argument("--test-batch-size", type=int, default=1000)
    parser.add_argument("--max-batches", type=int, default=0, help="stop each epoch and the test after N batches")
    parser.add_argument("--seed", type=int, default={seed})
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    # download=True fetches MNIST only if it is not already under --data-root.
    train_set = datasets.MNIST(args.data_root, train=True, download=True, transform=train_transform())
    test_set = datasets.MNIST(args.data_root, train=False, download=True, transform=test_transform())
{subset}    loader_args = dict(num_workers=args.workers, pin_memory=device.type == "cuda")
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch_size, shuffle=True, **loader_args)
    test_loader = torch.utils.data.DataLoader(test_set, batch_size=args.test_batch_size, shuffle=False, **loader_args)

    model = Net().to(device)
    print(f"{{sum(p.numel() for p in model.parameters() if p.requires_grad):,}} parameters")
    optimizer = make_optimizer(model)
    steps_per_epoch = min(len(train_loader), args.max_batches) if args.max_batches else len(train_loader)
    scheduler = make_scheduler(optimizer, args.epochs, steps_per_epoch)
    for epoch in range(1, args.epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        train_loss, train_acc = train(model, device, train_loader, optimizer, scheduler, args.max_batches)
        test_loss, test_acc, correct, total = test(model, device, test_loader, args.max_batches)
        print(f"Epoch {{epoch:2d}}: lr {{lr:.4g}}  train loss {{train_loss:.4f}}, train accuracy {{train_acc:.2f}}%"
              f"  |  test loss {{test_loss:.4f}}, test accuracy {{test_acc:.2f}}% ({{correct}}/{{total}})", flush=True)
        if scheduler is not None and not SCHEDULE_PER_BATCH:
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(test_loss)
            else:
                scheduler.step()


if __name__ == "__main__":
    main()
"""
