"""Batched per-sample random augmentation of [B, 1, H, W] float images in [0, 1] (airbench style)."""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from drill.config import AugmentConfig
from drill.data import Mnist

# Columns of the single uniform draw in draw_params; the layout never depends on the config, so a fixed seed
# gives every sample the same "direction" whatever the ranges are (the live preview then changes smoothly).
_ANGLE, _TX, _TY, _SCALE, _SHEAR, _BRIGHT, _CONTRAST, _ERASE_P, _ERASE_SIDE, _ERASE_TOP, _ERASE_LEFT = range(11)
_N_DRAWS = 11


@dataclass(frozen=True)
class AugmentParams:
    """Per-sample augmentation parameters, each a tensor with leading dimension B."""

    angle: Tensor  # [B] degrees, counter-clockwise positive
    translate: Tensor  # [B, 2] pixels (tx, ty), unrounded
    scale: Tensor  # [B]
    shear: Tensor  # [B, 2] degrees (x, y); y is always 0
    brightness: Tensor  # [B] factor
    contrast: Tensor  # [B] factor
    erase: Tensor  # [B] bool, whether this sample gets a square erased
    erase_top: Tensor  # [B] int64 row of the square's top edge
    erase_left: Tensor  # [B] int64 column of the square's left edge
    erase_side: Tensor  # [B] int64 side of the square in pixels


def draw_params(cfg, batch: int, generator: torch.Generator, height: int = 28, width: int = 28) -> AugmentParams:
    """Draw per-sample augmentation parameters for a batch from the ranges in cfg."""
    u = torch.rand(batch, _N_DRAWS, generator=generator, device=generator.device, dtype=torch.float64)
    sym = 2.0 * u - 1.0  # U(-1, 1), scaled by each range below
    # torchvision's RandomAffine rounds the shift to whole pixels; sub-pixel shifts are just as valid and
    # keep the shift continuous in the configured range.
    translate = torch.stack((sym[:, _TX] * cfg.translate * width, sym[:, _TY] * cfg.translate * height), dim=1)
    shear = torch.stack((sym[:, _SHEAR] * cfg.shear, torch.zeros_like(sym[:, _SHEAR])), dim=1)

    full_side = min(height, width)
    side = torch.round(full_side * cfg.erase_size * (0.5 + 0.5 * u[:, _ERASE_SIDE])).long().clamp(0, full_side)
    # floor(u * (n + 1)) is uniform over the n + 1 positions that keep the square inside; min() guards u -> 1.
    top = torch.minimum((u[:, _ERASE_TOP] * (height - side + 1)).long(), height - side)
    left = torch.minimum((u[:, _ERASE_LEFT] * (width - side + 1)).long(), width - side)
    return AugmentParams(
        angle=sym[:, _ANGLE] * cfg.rotation,
        translate=translate,
        scale=1.0 + sym[:, _SCALE] * cfg.scale,
        shear=shear,
        brightness=1.0 + sym[:, _BRIGHT] * cfg.brightness,
        contrast=1.0 + sym[:, _CONTRAST] * cfg.contrast,
        erase=u[:, _ERASE_P] < cfg.erase_prob,
        erase_top=top,
        erase_left=left,
        erase_side=side,
    )


def _inverse_affine_theta(angle, translate, scale, shear, height: int, width: int) -> Tensor:
    """Batched torchvision _get_inverse_affine_matrix (centre = image centre), rescaled for F.affine_grid."""
    # torchvision's F.affine turns clockwise for positive angles while F.rotate (and our API) turns counter-clockwise;
    # F.rotate passes -angle to the same matrix helper, and so do we.
    rot = torch.deg2rad(-angle.double())
    sx, sy = torch.deg2rad(shear.double()).unbind(1)
    tx, ty = translate.double().unbind(1)
    scale = scale.double()

    cos_sy, tan_sx, rot_minus_sy = torch.cos(sy), torch.tan(sx), rot - sy
    a = torch.cos(rot_minus_sy) / cos_sy
    b = -(a * tan_sx + torch.sin(rot))
    c = torch.sin(rot_minus_sy) / cos_sy
    d = torch.cos(rot) - c * tan_sx
    # det([[a, b], [c, d]]) == 1, so the inverse rotate-scale-shear needs no division by the determinant.
    m00, m01, m10, m11 = d / scale, -b / scale, -c / scale, a / scale
    # With the centre at the origin, torchvision's centre terms vanish and only the translation remains.
    m02 = -m00 * tx - m01 * ty
    m12 = -m10 * tx - m11 * ty

    # torchvision applies the matrix to centred pixel coordinates and divides by (w/2, h/2) afterwards; affine_grid
    # applies theta to normalised coordinates, so pixel units are converted on both sides of the matrix.
    half_w, half_h = 0.5 * width, 0.5 * height
    row0 = torch.stack((m00, m01 * half_h / half_w, m02 / half_w), dim=1)
    row1 = torch.stack((m10 * half_w / half_h, m11, m12 / half_h), dim=1)
    return torch.stack((row0, row1), dim=1)


def affine_batch(
    x: Tensor, angle: Tensor, translate: Tensor, scale: Tensor, shear: Tensor, fill: float = 0.0
) -> Tensor:
    """Rotate (degrees, anticlockwise), shift (pixels), scale and shear (degrees) each image; bilinear, fill outside."""
    height, width = x.shape[-2:]
    theta = _inverse_affine_theta(angle, translate, scale, shear, height, width).to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # grid_sample pads with zeros; shifting the image by -fill makes that padding equal fill once shifted back.
    if fill:
        return F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def brightness_batch(x: Tensor, factor: Tensor) -> Tensor:
    """Multiply each image by its factor and clamp to [0, 1], like torchvision adjust_brightness."""
    return (x * factor.to(x.device, x.dtype).view(-1, 1, 1, 1)).clamp_(0.0, 1.0)


def contrast_batch(x: Tensor, factor: Tensor) -> Tensor:
    """Blend each image with its own mean by factor and clamp to [0, 1], like torchvision adjust_contrast."""
    ratio = factor.to(x.device, x.dtype).view(-1, 1, 1, 1)
    mean = x.mean(dim=(-3, -2, -1), keepdim=True)
    return (x * ratio + mean * (1.0 - ratio)).clamp_(0.0, 1.0)


def erase_batch(x: Tensor, top: Tensor, left: Tensor, height: Tensor, width: Tensor, value: float = 0.0) -> Tensor:
    """Set the rectangle [top, top + height) x [left, left + width) of each image to value."""
    rows = torch.arange(x.shape[-2], device=x.device).view(1, -1, 1)
    cols = torch.arange(x.shape[-1], device=x.device).view(1, 1, -1)
    top, left = top.view(-1, 1, 1), left.view(-1, 1, 1)
    inside = (
        (rows >= top) & (rows < top + height.view(-1, 1, 1)) & (cols >= left) & (cols < left + width.view(-1, 1, 1))
    )
    return x.masked_fill(inside.unsqueeze(1), value)


def augment_batch(x: Tensor, cfg, generator: torch.Generator) -> Tensor:
    """Apply the augmentations cfg enables to a [B, 1, H, W] batch in [0, 1], one random draw per sample."""
    if not cfg.enabled:
        return x
    batch, _, height, width = x.shape
    p = draw_params(cfg, batch, generator, height, width)
    if cfg.rotation or cfg.translate or cfg.scale or cfg.shear:
        x = affine_batch(x, p.angle, p.translate, p.scale, p.shear, fill=cfg.fill)
    if cfg.brightness:
        x = brightness_batch(x, p.brightness)
    if cfg.contrast:
        x = contrast_batch(x, p.contrast)
    if cfg.erase_prob:
        # A zero side leaves a sample untouched, which is how samples that lost the erase_prob draw are skipped.
        side = torch.where(p.erase, p.erase_side, 0).to(x.device)
        x = erase_batch(x, p.erase_top.to(x.device), p.erase_left.to(x.device), side, side)
    return x


def preview(images_uint8: Tensor, cfg, seed: int, copies: int) -> Tensor:
    """Augment N uint8 digits `copies` times each with a fixed seed; returns [N*copies, 1, H, W] floats in [0, 1]."""
    x = images_uint8.reshape(images_uint8.shape[0], 1, *images_uint8.shape[-2:]).float().div_(255.0)
    # Digit-major order: rows i*copies .. (i+1)*copies - 1 are the copies of digit i.
    x = x.repeat_interleave(copies, dim=0)
    return augment_batch(x, cfg, torch.Generator().manual_seed(seed))


# -- the Train page's live preview ---------------------------------------------------------------------------
# Test digits shown in the augmentation preview: the first 0, 1, ..., 7 of the test set, always the same ones.
PREVIEW_DIGITS = 8
PREVIEW_COPIES = 3
PREVIEW_SEED = 0
PREVIEW_CAPTION = f"The same {PREVIEW_DIGITS} test digits, augmented {PREVIEW_COPIES} times each (one digit per column)"


def preview_digits(test_labels: torch.Tensor) -> torch.Tensor:
    """Indices of the first test image of each digit 0..PREVIEW_DIGITS-1."""
    return torch.stack([torch.nonzero(test_labels == digit)[0, 0] for digit in range(PREVIEW_DIGITS)])


def preview_grid(images: torch.Tensor, cfg: AugmentConfig, zoom: int = 3, gap: int = 2) -> np.ndarray:
    """uint8 digits augmented PREVIEW_COPIES times each, tiled one digit per column, zoomed for crisp pixels."""
    augmented = preview(images, cfg, PREVIEW_SEED, PREVIEW_COPIES)[:, 0]  # [N*copies, 28, 28], digit-major
    side = augmented.shape[-1] + gap
    grid = torch.ones(PREVIEW_COPIES * side + gap, len(images) * side + gap) * 0.35  # grey gaps frame the digits
    for index, image in enumerate(augmented):
        digit, copy = divmod(index, PREVIEW_COPIES)
        top, left = gap + copy * side, gap + digit * side
        grid[top : top + side - gap, left : left + side - gap] = image
    pixels = (grid.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return np.kron(pixels, np.ones((zoom, zoom), dtype=np.uint8))


def augment_preview(data: Mnist, cfg: AugmentConfig) -> np.ndarray:
    """The Train page's preview: the PREVIEW_DIGITS test digits through preview_grid."""
    return preview_grid(data.test_images[preview_digits(data.test_labels)], cfg)
