"""Tests for drill.augment: parity with torchvision, random ranges, reproducibility."""

from types import SimpleNamespace

import pytest
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from drill import augment
from drill.augment import (
    affine_batch,
    augment_batch,
    brightness_batch,
    contrast_batch,
    draw_params,
    erase_batch,
    preview,
)
from drill.config import AugmentConfig

BILINEAR = InterpolationMode.BILINEAR
EPS32 = torch.finfo(torch.float32).eps
PIXEL_RANGE = 1.0  # images in [0, 1]: the largest step between neighbouring pixels
ROUNDINGS = 10  # float32 operations behind one sampling coordinate on each side (grid, matrix product, unnormalise)


def geom_tol(side: int) -> float:
    """How far our bilinear resampling of a side x side image may be from torchvision's on float rounding alone.

    Both sample the same grid but compute it differently (torchvision in pixel units, normalised afterwards;
    F.affine_grid in normalised units), so each coordinate carries up to ROUNDINGS roundings of EPS32 on each side,
    relative to values no larger than the image side in pixels. A bilinear sample moves by at most its shift times
    the pixel range, along each of the two axes. (Observed: at most about 5e-6, on the 84-pixel padded images.)
    """
    return 2 * 2 * ROUNDINGS * EPS32 * side * PIXEL_RANGE


AFFINE_CASES = [
    # angle (ours, counter-clockwise), translate (px), scale, shear (x, y) degrees
    (30.0, (2.5, -1.25), 1.2, (10.0, 5.0)),
    (-40.0, (3.0, 4.0), 0.8, (-25.0, 0.0)),
    (7.0, (0.0, 0.0), 1.0, (0.0, 0.0)),
    (0.0, (-4.2, 0.7), 1.0, (0.0, 12.0)),
]


def make_cfg(**overrides):
    """Stand-in for drill.config.AugmentConfig with the same attribute names; everything off by default."""
    values = {"rotation": 0.0, "fill": 0.0, "translate": 0.0, "scale": 0.0, "shear": 0.0, "brightness": 0.0}
    values |= {"contrast": 0.0, "erase_prob": 0.0, "erase_size": 0.3}
    values.update(overrides)
    keys = ("rotation", "translate", "scale", "shear", "brightness", "contrast", "erase_prob")
    return SimpleNamespace(**values, enabled=any(values[k] for k in keys))


EVERYTHING = make_cfg(
    rotation=20.0,
    fill=0.2,
    translate=0.15,
    scale=0.2,
    shear=15.0,
    brightness=0.4,
    contrast=0.4,
    erase_prob=0.5,
    erase_size=0.4,
)


def digit_like(n: int, seed: int) -> torch.Tensor:
    """Seeded [n, 1, 28, 28] images of a few soft blobs inside an empty 4-pixel frame, like MNIST's 20x20 box."""
    g = torch.Generator().manual_seed(seed)
    coords = torch.arange(28.0)
    yy, xx = coords.view(28, 1), coords.view(1, 28)
    images = torch.zeros(n, 1, 28, 28)
    for i in range(n):
        for _ in range(4):
            cy, cx = (6.0 + 16.0 * torch.rand(2, generator=g)).tolist()
            sigma = 1.5 + 1.5 * torch.rand(1, generator=g).item()
            images[i, 0] += torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    images[..., :4, :] = images[..., -4:, :] = images[..., :4] = images[..., -4:] = 0.0
    return images.clamp_(0.0, 1.0)


def noise(n: int, seed: int) -> torch.Tensor:
    """Seeded [n, 1, 28, 28] uniform noise: content right up to the border, the hardest case for padding."""
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def batched(n, angle, translate, scale, shear):
    """Repeat one set of affine parameters as the [B] / [B, 2] tensors affine_batch takes."""
    return (
        torch.full((n,), angle),
        torch.tensor([translate] * n),
        torch.full((n,), scale),
        torch.tensor([shear] * n),
    )


@pytest.mark.parametrize("angle, translate, scale, shear", AFFINE_CASES)
def test_affine_matches_torchvision_affine(angle, translate, scale, shear):
    x = noise(3, seed=1)
    out = affine_batch(x, *batched(3, angle, translate, scale, shear))
    # torchvision's F.affine turns clockwise for positive angles (F.rotate counter-clockwise), hence -angle.
    ref = TF.affine(x, -angle, list(translate), scale, list(shear), interpolation=BILINEAR)
    assert (out - ref).abs().max().item() < geom_tol(28)


def test_affine_per_sample_parameters_match_torchvision_one_by_one():
    x = noise(len(AFFINE_CASES), seed=2)
    params = [torch.tensor(v) for v in zip(*AFFINE_CASES, strict=True)]
    out = affine_batch(x, *params)
    for i, (angle, translate, scale, shear) in enumerate(AFFINE_CASES):
        ref = TF.affine(x[i], -angle, list(translate), scale, list(shear), interpolation=BILINEAR)
        assert (out[i] - ref).abs().max().item() < geom_tol(28)


@pytest.mark.parametrize("angle", [7.0, -33.0, 45.0, 90.0])
def test_pure_rotation_matches_torchvision_rotate(angle):
    x = noise(2, seed=3)
    out = affine_batch(x, *batched(2, angle, (0.0, 0.0), 1.0, (0.0, 0.0)))
    ref = TF.rotate(x, angle, interpolation=BILINEAR)
    assert (out - ref).abs().max().item() < geom_tol(28)


def test_positive_angle_turns_counter_clockwise():
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 0:4, 4] = 1.0  # bar from the top edge to the centre
    out = affine_batch(x, *batched(1, 90.0, (0.0, 0.0), 1.0, (0.0, 0.0)))
    expected = torch.zeros(1, 1, 9, 9)
    expected[0, 0, 4, 0:4] = 1.0  # now from the left edge to the centre
    assert (out - expected).abs().max().item() < geom_tol(9)


@pytest.mark.parametrize("angle, translate, scale, shear", AFFINE_CASES)
def test_fill_is_bilinear_sampling_of_an_image_padded_with_fill(angle, translate, scale, shear):
    x, fill, pad = noise(2, seed=4), 0.3, 28
    out = affine_batch(x, *batched(2, angle, translate, scale, shear), fill=fill)
    # Padding symmetrically keeps the centre, so the middle of the padded result is the ideal constant-fill answer.
    padded = TF.pad(x, [pad], fill=fill)
    ref = TF.affine(padded, -angle, list(translate), scale, list(shear), interpolation=BILINEAR)[
        ..., pad:-pad, pad:-pad
    ]
    assert (out - ref).abs().max().item() < geom_tol(28 + 2 * pad)


@pytest.mark.parametrize("angle, translate, scale, shear", AFFINE_CASES)
def test_fill_matches_torchvision_except_where_bilinear_straddles_the_edge(angle, translate, scale, shear):
    fill, params = 0.3, batched(2, angle, translate, scale, shear)
    tv_args = (-angle, list(translate), scale, list(shear))
    # torchvision blends as mask * sampled + (1 - mask) * fill, weighting the in-image part by the in-image mask
    # twice; on pixels whose bilinear footprint straddles the edge that darkens real content, so there the two
    # differ by (1 - mask) * sampled. Fully inside (mask 1) or fully outside (mask 0) they agree.
    x = noise(2, seed=5)
    out = affine_batch(x, *params, fill=fill)
    ref = TF.affine(x, *tv_args, interpolation=BILINEAR, fill=fill)
    mask = TF.affine(torch.ones_like(x), *tv_args, interpolation=BILINEAR)
    clean = (mask > 1 - 1e-6) | (mask < 1e-6)
    assert (out - ref)[clean].abs().max().item() < geom_tol(28)
    # With MNIST-like images (nothing near the border) the difference vanishes everywhere.
    x = digit_like(2, seed=5)
    out = affine_batch(x, *params, fill=fill)
    ref = TF.affine(x, *tv_args, interpolation=BILINEAR, fill=fill)
    assert (out - ref).abs().max().item() < geom_tol(28)


def test_brightness_and_contrast_match_torchvision():
    x = digit_like(4, seed=6) * 0.8 + 0.1
    factors = torch.tensor([0.5, 0.9, 1.2, 1.5])
    bright, contrast = brightness_batch(x, factors), contrast_batch(x, factors)
    for i, f in enumerate(factors.tolist()):
        assert (bright[i] - TF.adjust_brightness(x[i], f)).abs().max().item() < 1e-6
        assert (contrast[i] - TF.adjust_contrast(x[i], f)).abs().max().item() < 1e-6
    assert bright.max().item() == 1.0, "the 1.5 factor must saturate and be clamped"


def test_erase_matches_torchvision():
    x = noise(4, seed=7)
    top, left = torch.tensor([0, 5, 20, 27]), torch.tensor([3, 0, 14, 27])
    height, width = torch.tensor([4, 10, 8, 1]), torch.tensor([6, 10, 14, 1])
    out = erase_batch(x, top, left, height, width)
    for i in range(4):
        ref = TF.erase(x[i], top[i].item(), left[i].item(), height[i].item(), width[i].item(), torch.tensor(0.0))
        assert torch.equal(out[i], ref)
    assert torch.equal(erase_batch(x, top, left, height * 0, width), x)


def test_draw_params_honours_ranges_and_spreads_over_them():
    n, cfg = 20000, EVERYTHING
    p = draw_params(cfg, n, torch.Generator().manual_seed(8))

    def spans(values, low, high):
        span = high - low
        return low <= values.min().item() < low + 0.01 * span and high - 0.01 * span < values.max().item() <= high

    assert spans(p.angle, -cfg.rotation, cfg.rotation)
    assert spans(p.translate[:, 0], -cfg.translate * 28, cfg.translate * 28)
    assert spans(p.translate[:, 1], -cfg.translate * 28, cfg.translate * 28)
    assert spans(p.scale, 1 - cfg.scale, 1 + cfg.scale)
    assert spans(p.shear[:, 0], -cfg.shear, cfg.shear)
    assert torch.all(p.shear[:, 1] == 0)
    assert spans(p.brightness, 1 - cfg.brightness, 1 + cfg.brightness)
    assert spans(p.contrast, 1 - cfg.contrast, 1 + cfg.contrast)
    assert abs(p.erase.float().mean().item() - cfg.erase_prob) < 0.02
    side = p.erase_side
    assert side.min().item() == round(0.5 * cfg.erase_size * 28) and side.max().item() == round(cfg.erase_size * 28)
    for start in (p.erase_top, p.erase_left):
        assert start.min().item() == 0 and (start + side).max().item() == 28
        assert torch.all(start >= 0) and torch.all(start + side <= 28)
    # Parameters of different augmentations are drawn independently.
    assert abs(torch.corrcoef(torch.stack((p.angle, p.scale)))[0, 1].item()) < 0.05


def test_same_seed_same_output_different_seed_different_and_global_rng_untouched():
    x = digit_like(16, seed=9)
    rng_before = torch.get_rng_state()
    first = augment_batch(x, EVERYTHING, torch.Generator().manual_seed(10))
    again = augment_batch(x, EVERYTHING, torch.Generator().manual_seed(10))
    other = augment_batch(x, EVERYTHING, torch.Generator().manual_seed(11))
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_augment_keeps_shape_dtype_and_range_and_changes_each_sample_differently():
    x = digit_like(16, seed=12)
    out = augment_batch(x, EVERYTHING, torch.Generator().manual_seed(13))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert 0.0 <= out.min().item() and out.max().item() <= 1.0
    same = augment_batch(x[:1].expand(16, -1, -1, -1), EVERYTHING, torch.Generator().manual_seed(13))
    assert len({tuple(img.flatten().tolist()) for img in same}) == 16


def test_nothing_enabled_returns_the_input_itself():
    x = digit_like(2, seed=14)
    gen = torch.Generator().manual_seed(15)
    gen_state = gen.get_state()
    assert augment_batch(x, make_cfg(fill=0.5, erase_size=0.5), gen) is x
    assert torch.equal(gen.get_state(), gen_state)


def test_affine_pass_skipped_when_no_geometric_augmentation(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("affine_batch called although rotation, translate, scale and shear are all 0")

    monkeypatch.setattr(augment, "affine_batch", fail)
    x = digit_like(4, seed=16)
    cfg = make_cfg(fill=0.7, brightness=0.3, contrast=0.3, erase_prob=1.0)
    out = augment_batch(x, cfg, torch.Generator().manual_seed(17))
    assert out.shape == x.shape and not torch.equal(out, x)


def test_single_augmentations_each_apply_alone():
    x = digit_like(8, seed=18)
    for name, value in [
        ("rotation", 10.0),
        ("translate", 0.1),
        ("scale", 0.1),
        ("shear", 10.0),
        ("brightness", 0.3),
        ("contrast", 0.3),
        ("erase_prob", 1.0),
    ]:
        out = augment_batch(x, make_cfg(**{name: value}), torch.Generator().manual_seed(19))
        assert not torch.equal(out, x), name


def test_erasing_sets_one_square_per_chosen_sample_to_zero():
    x = torch.ones(64, 1, 28, 28)
    cfg = make_cfg(erase_prob=0.5, erase_size=0.3)
    out = augment_batch(x, cfg, torch.Generator().manual_seed(20))
    p = draw_params(cfg, 64, torch.Generator().manual_seed(20))
    zeros = (out == 0).flatten(1).sum(1)
    assert torch.equal(zeros, torch.where(p.erase, p.erase_side**2, 0))


def test_preview_is_deterministic_digit_major_and_in_range():
    images = (digit_like(3, seed=21) * 255).round().to(torch.uint8).squeeze(1)
    shown = preview(images, EVERYTHING, seed=0, copies=4)
    assert shown.shape == (12, 1, 28, 28) and shown.dtype == torch.float32
    assert 0.0 <= shown.min().item() and shown.max().item() <= 1.0
    assert torch.equal(shown, preview(images, EVERYTHING, seed=0, copies=4))
    assert not torch.equal(shown, preview(images, EVERYTHING, seed=1, copies=4))
    plain = preview(images, make_cfg(), seed=0, copies=4)
    assert torch.equal(plain[4:8], (images[1:2].float() / 255).expand(4, 28, 28).unsqueeze(1))


def test_works_with_the_real_augment_config():
    x = digit_like(4, seed=22)
    assert augment_batch(x, AugmentConfig(), torch.Generator()) is x
    out = augment_batch(x, AugmentConfig(rotation=7.0, erase_prob=1.0), torch.Generator().manual_seed(23))
    assert out.shape == x.shape and not torch.equal(out, x)
