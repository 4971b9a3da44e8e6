"""Batched random affine augmentation on tensors (torchvision's RandomAffine, vectorised).

Works on images scaled to [0, 1] before normalisation, so that the fill value 0 is the
same empty sky that torchvision would fill on the uint8 image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_affine(
    images: torch.Tensor,
    generator: torch.Generator,
    degrees: float = 180.0,
    translate: float = 2.0 / 150.0,
    scale: tuple[float, float] = (0.9, 1.1),
    hflip: bool = True,
) -> torch.Tensor:
    """images [N,1,H,W] in [0,1] -> the same, each rotated, shifted, scaled (bilinear)."""
    n, _, h, w = images.shape
    # The draws come from the (CPU) generator whatever the images' device.
    opts = {"generator": generator, "dtype": images.dtype}
    angle = (torch.rand(n, **opts) * 2 - 1) * math.radians(degrees)
    # translate is a fraction of the image size; affine_grid works in [-1, 1] (2 units wide).
    tx = (torch.rand(n, **opts) * 2 - 1) * translate * 2
    ty = (torch.rand(n, **opts) * 2 - 1) * translate * 2
    s = torch.rand(n, **opts) * (scale[1] - scale[0]) + scale[0]
    flip = torch.ones(n, dtype=images.dtype)
    if hflip:
        flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0).to(images.dtype)
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    # Inverse map from output to input coordinates, as grid_sample expects.
    theta = torch.stack(
        [
            torch.stack([cos * flip, -sin, tx], dim=1),
            torch.stack([sin * flip, cos, ty], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta.to(images.device), [n, 1, h, w], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def rotate(images: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate every image by the same angle (for rotation test-time augmentation)."""
    n, _, h, w = images.shape
    a = math.radians(degrees)
    row0 = torch.tensor([math.cos(a), -math.sin(a), 0.0], dtype=images.dtype)
    row1 = torch.tensor([math.sin(a), math.cos(a), 0.0], dtype=images.dtype)
    theta = torch.stack([row0, row1]).expand(n, 2, 3)
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
