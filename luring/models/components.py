"""A default defense component P for any image size C×H×W (sizes the paper's tables 5-7 and
15 do not cover): the paper's conv-BN-ReLU encoder-decoder shape, scaled to the input.

Shape (:func:`component_plan`): ``k`` stride-2 stages, the fewest that bring the shorter side
down to at most 7 pixels (28 → 7, 32 → 4, 48 → 6, 224 → 7: the 4×4 to 7×7 bottlenecks of the
paper's components); widths ``16·C·2^i`` for level ``i`` (capped at 512), so a 3-channel input
gets three times the channels of a grey one, as the paper's colour components are wider than
its MNIST one.

Layers: a stem Conv3x3(C → w0) + BN + ReLU at full resolution; per level ``i = 1..k`` a
stride-2 Conv3x3(w_{i-1} → w_i) + BN + ReLU; dropout at the bottleneck; then per level back
up, a nearest-neighbour upsampling to the exact size the encoder had there (odd sizes round
trip exactly: 7 → 4 → 7) followed by Conv3x3(w_i → w_{i-1}) + BN + ReLU; finally
Conv3x3(w0 → C) + Sigmoid. Input (N, C, H, W) in [0, 1], output the same shape in (0, 1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from luring.errors import LuringError

__all__ = ["DefaultComponent", "component_plan", "MAX_BOTTLENECK", "MAX_WIDTH"]

MAX_BOTTLENECK = 7  # the shorter side of the bottleneck is at most this many pixels
MAX_WIDTH = 512


def component_plan(in_channels: int, height: int, width: int) -> tuple[int, ...]:
    """The channel widths ``(w0, w1, ..., wk)`` of :class:`DefaultComponent` for C×H×W
    images: ``k`` = the number of stride-2 stages (the fewest that bring ``min(H, W)`` to at
    most 7, at least 1), ``w_i = min(16·C·2^i, 512)``. Images smaller than 2×2 or an
    in_channels below 1 are a LuringError."""
    if in_channels < 1 or height < 2 or width < 2:
        raise LuringError(f"a component needs images of at least 1×2×2, got "
                          f"{in_channels}×{height}×{width}")
    side, k = min(height, width), 0
    while side > MAX_BOTTLENECK or k == 0:
        side, k = math.ceil(side / 2), k + 1
    return tuple(min(16 * in_channels * 2 ** i, MAX_WIDTH) for i in range(k + 1))


def _block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class DefaultComponent(nn.Module):
    """P for C×H×W images (see the module docstring). ``size`` = (H, W) the component is
    planned for; it also runs on other sizes (the upsampling follows the encoder), but its
    bottleneck is then not the planned one. ``dropout`` at the bottleneck (default 0)."""

    def __init__(self, in_channels: int = 3, size: tuple[int, int] = (32, 32),
                 dropout: float = 0.0) -> None:
        super().__init__()
        h, w = (int(v) for v in size)
        self.size = (h, w)
        widths = component_plan(in_channels, h, w)
        self.widths = widths
        self.stem = _block(in_channels, widths[0])
        self.down = nn.ModuleList(_block(widths[i], widths[i + 1], stride=2)
                                  for i in range(len(widths) - 1))
        self.dropout = nn.Dropout(dropout)
        self.up = nn.ModuleList(_block(widths[i + 1], widths[i])
                                for i in reversed(range(len(widths) - 1)))
        self.head = nn.Sequential(nn.Conv2d(widths[0], in_channels, 3, padding=1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.stem(x)
        sizes = []
        for block in self.down:
            sizes.append(z.shape[-2:])
            z = block(z)
        z = self.dropout(z)
        for block, size in zip(self.up, reversed(sizes), strict=True):
            z = block(F.interpolate(z, size=tuple(size), mode="nearest"))
        return self.head(z)
