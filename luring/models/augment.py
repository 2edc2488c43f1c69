"""Label-free image augmentation on batches: random rotation and shifts (the authors'
ImageDataGenerator settings for CIFAR10: rotation 10°, shifts 5/32), done with one
``affine_grid``/``grid_sample`` per batch so that it runs on the batch's device."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["random_affine"]


def random_affine(x: torch.Tensor, *, rotation_deg: float = 0.0, shift: float = 0.0,
                  fill: str = "zeros", generator: torch.Generator | None = None
                  ) -> torch.Tensor:
    """Rotate each image by a uniform angle in ±``rotation_deg`` and shift it by a uniform
    fraction in ±``shift`` of its size (per axis), filling the uncovered area with zeros
    (``fill="zeros"``) or the nearest border pixel (``fill="border"``).

    x: (N, C, H, W) in [0, 1]. Returns a new tensor of the same shape, still in [0, 1]
    (bilinear interpolation of values in [0, 1]). With both amounts 0, returns ``x``.
    """
    if fill not in ("zeros", "border"):
        raise ValueError(f"fill must be 'zeros' or 'border', got {fill!r}")
    if rotation_deg == 0 and shift == 0:
        return x
    n = x.shape[0]
    u = torch.rand(n, 3, generator=generator, device=generator.device if generator else "cpu")
    u = u.to(x.device, x.dtype) * 2 - 1
    angle = u[:, 0] * math.radians(rotation_deg)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # affine_grid works in [-1, 1] coordinates: a shift of s·size is 2s.
    theta = torch.stack([
        torch.stack([cos, -sin, u[:, 1] * 2 * shift], dim=1),
        torch.stack([sin, cos, u[:, 2] * 2 * shift], dim=1),
    ], dim=1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    pad = "border" if fill == "border" else "zeros"
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=pad,
                         align_corners=False).clamp_(0, 1)
