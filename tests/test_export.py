"""Tests for drill.export: the generated PyTorch script builds the lab's network and trains offline."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch
from PIL import Image

from drill.bench import write_idx_files
from drill.config import RunConfig
from drill.export import named_script, pytorch_script, script_filename
from drill.gallery import NETWORKS
from drill.model import build_model, count_params
from drill.presets import BY_NAME, PRESETS

EVERYTHING = BY_NAME["final"].config.replace(
    model={"head": "fc", "batch_norm": "after_relu", "dropout_kind": "channel", "bias": True, "log_softmax": False},
    augment={
        "rotation": 10.0,
        "translate": 0.1,
        "scale": 0.1,
        "shear": 5.0,
        "brightness": 0.2,
        "contrast": 0.2,
        "erase_prob": 0.5,
        "fill": 0.1,
    },
    train={"optimizer": "adamw", "schedule": "plateau", "subset": 1000},
)
VARIANTS = {
    **{preset.name: preset.config for preset in PRESETS},
    "everything": EVERYTHING,
    "gap_linear": RunConfig().replace(model={"head": "gap_linear", "layers": "8p,M,T4,16", "dropout": 0.1}),
    "conv_gap": RunConfig().replace(model={"head": "conv_gap", "batch_norm": "before_relu", "bias": True}),
    # Each layer's own settings: batch norm placed and without learnable parameters, dropout after a pool only,
    # 5x5 and 7x7 kernels, an average pool, a conv without ReLU, and a head with a hidden layer and its dropout.
    "per_layer": RunConfig().replace(
        model={
            "layers": "8p:bn=after:affine=0,M:drop=0.1:dk=channel,12:k=5:bias=1,A,16p:k=7:relu=0",
            "batch_norm": "before_relu",
            "head": "fc",
            "hidden": "32",
            "hidden_dropout": 0.1,
        },
        train={"subset": 1000},
    ),
    **{network.name: network.config for network in NETWORKS},
}
ACCURACY_LINE = re.compile(r"Epoch  1: .*test accuracy (\d+\.\d+)% \((\d+)/(\d+)\)")


def load_script(cfg: RunConfig) -> dict:
    """Execute a generated script as a module (its main() does not run) and return its namespace."""
    namespace = {"__name__": "generated_drill_script"}
    exec(compile(pytorch_script(cfg, "test"), "generated_drill_script.py", "exec"), namespace)
    return namespace


@pytest.mark.parametrize("name", list(VARIANTS))
def test_generated_net_is_the_labs_net(name):
    """Same parameter count, and with the lab's weights copied in, the same outputs."""
    cfg = VARIANTS[name]
    generated = load_script(cfg)["Net"]()
    ours = build_model(cfg.model)
    assert count_params(generated) == count_params(ours)
    # Blocks are registered in the lab's order, so the state dicts line up entry by entry.
    shapes = [tuple(t.shape) for t in generated.state_dict().values()]
    assert shapes == [tuple(t.shape) for t in ours.state_dict().values()]
    generated.load_state_dict(dict(zip(generated.state_dict(), ours.state_dict().values(), strict=True)))
    x = torch.randn(4, 1, 28, 28)
    generated.eval(), ours.eval()
    with torch.no_grad():
        assert torch.allclose(generated(x), ours(x), atol=1e-6)


def test_every_preset_states_its_parameter_count():
    for preset in PRESETS:
        params = count_params(build_model(preset.config.model))
        assert f"has {params:,} trainable parameters" in pytorch_script(preset.config, preset.title)


def test_augmentations_become_torchvision_transforms():
    from torchvision import transforms

    names = [type(t).__name__ for t in load_script(EVERYTHING)["train_transform"]().transforms]
    assert names == ["RandomAffine", "ColorJitter", "ToTensor", "RandomErasing", "Normalize"]
    rotation_only = load_script(BY_NAME["regularised"].config)["train_transform"]().transforms
    assert [type(t).__name__ for t in rotation_only] == ["RandomRotation", "ToTensor", "Normalize"]
    assert rotation_only[0].degrees == [-7.0, 7.0]
    plain = load_script(BY_NAME["lean"].config)["train_transform"]().transforms
    assert [type(t).__name__ for t in plain] == ["ToTensor", "Normalize"]
    image = Image.new("L", (28, 28), 0)
    assert load_script(EVERYTHING)["train_transform"]()(image).shape == (1, 28, 28)
    assert isinstance(rotation_only[0], transforms.RandomRotation)


def test_script_is_valid_python_with_a_readable_header():
    script = pytorch_script(BY_NAME["quick"].config, 'Quick "demo" """ \\ step')
    compile(script, "drill_quick.py", "exec")
    assert script.startswith('"""MNIST drill-down: Quick "demo"')
    assert '#   "model": {' in script  # the config travels along as a comment
    assert "stratified_subset(train_set.targets, 6000)" in script
    assert "stratified_subset" not in pytorch_script(BY_NAME["final"].config)
    assert script_filename("final") == "drill_final.py"
    assert script_filename(None) == "drill_custom.py"
    assert script_filename("run-3") == "drill_run_3.py"


def test_a_runs_script_is_named_after_the_run_not_the_preset_the_current_model_shares():
    quick = BY_NAME["quick"].config
    assert named_script(quick)[0] == "drill_quick.py"
    name, script = named_script(quick, "Quick demo #2, seed 1")
    assert name == "drill_quick_demo_2_seed_1.py" and script.startswith('"""MNIST drill-down: Quick demo')
    name, script = named_script(quick.replace(model={"dropout": 0.1}), "Quick demo (edited), seed 1")
    assert name == "drill_quick_demo_edited_seed_1.py" and "a custom drill-down step (Quick demo (edited)" in script


@pytest.fixture(scope="module")
def mnist_root(mnist, tmp_path_factory):
    """MNIST as torchvision's raw idx files, so datasets.MNIST finds it and never downloads."""
    return write_idx_files(mnist, tmp_path_factory.mktemp("torchvision-mnist"))


@pytest.mark.parametrize("name", ["quick", "everything", "per_layer"])
def test_generated_script_trains_offline(name, mnist_root, tmp_path):
    cfg = VARIANTS[name]
    path = tmp_path / script_filename(name)
    path.write_text(pytorch_script(cfg, name))
    command = [
        sys.executable,
        str(path),
        "--data-root",
        str(mnist_root),
        "--epochs",
        "1",
        "--max-batches",
        "5",
        "--workers",
        "0",
        "--test-batch-size",
        "200",
        "--device",
        "cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two shared cores: one thread each is plenty for 5 batches
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{count_params(build_model(cfg.model)):,} parameters" in done.stdout
    match = ACCURACY_LINE.search(done.stdout)
    assert match, done.stdout
    accuracy, correct, total = float(match[1]), int(match[2]), int(match[3])
    assert total == 1000 and 0 <= accuracy <= 100 and accuracy == pytest.approx(100 * correct / total, abs=0.01)
    assert not list(mnist_root.glob("MNIST/raw/*.gz")), "the script must not have downloaded anything"


@pytest.mark.parametrize("size", [1000, 6005, 58_000])
def test_generated_subset_is_the_labs_subset(size, mnist):
    from drill.train import stratified_subset

    generated = load_script(EVERYTHING)["stratified_subset"](mnist.train_labels, size)
    assert generated == stratified_subset(mnist.train_labels, size).tolist()
    assert len(generated) == size
