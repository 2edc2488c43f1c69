"""BSR, block shuffle and rotation (Wang et al., CVPR 2024): MI-FGSM with the gradient
averaged over ``num_copies`` copies of the iterate, each cut into blocks that are shuffled
and rotated.

One copy of an image (the paper's n × n blocks, built the way TransferAttack's ``bsr.py``,
Trustworthy-AI-Group/TransferAttack, builds them so that blocks of unequal size tile):

1. a random first axis (rows or columns, probability 1/2 each) is cut into ``num_block``
   strips at random cut points (distinct, from 1 .. size−1) and the strips are shuffled;
2. every strip is cut along the other axis into ``num_block`` pieces at its own random cut
   points, and its pieces are shuffled;
3. every block is rotated about its centre by an angle uniform in
   [−``max_angle``, ``max_angle``] degrees, bilinear, zero outside the block (as the paper
   describes it; the copy of TransferAttack's ``bsr.py`` consulted shuffles only).

With ``max_angle`` 0 a copy is an exact permutation of the image's pixels. Defaults, the
paper's (section 4.1): 2 × 2 blocks, 20 copies, 24°, 10 iterations, decay 1,
``alpha = eps/steps`` (that TransferAttack copy: 3 blocks, 20 copies, no rotation); ``eps``
0.3 as the other attacks here (MNIST).

Randomness per example and gradient evaluation from a CPU generator seeded by
``example_seed(seed, example index, "block-shuffle-rotate", evaluation)`` (see
:mod:`luring.attacks.sia`): independent of the batch and of the device.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from luring.attacks.base import check_float, check_int
from luring.attacks.iterative import GradTransform
from luring.attacks.sia import SeededTransform, TransformCopies, cut_bounds

__all__ = ["block_shuffle_rotate", "BlockShuffleRotate", "BSR"]


def _layout(bounds: torch.Tensor, perm: torch.Tensor, size: int
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shuffled layout along an axis, batched over leading dims.

    ``bounds`` (..., k+1) source block bounds, ``perm`` (..., k): output slot j shows source
    block ``perm[j]``. Returns per output position (..., size): source block, its source start,
    its length, and the offset within it."""
    pos = torch.arange(size, device=bounds.device)
    lengths = bounds[..., 1:] - bounds[..., :-1]
    out_len = lengths.gather(-1, perm)
    out_bounds = torch.cat([torch.zeros_like(out_len[..., :1]), out_len.cumsum(-1)], -1)
    slot = (out_bounds[..., 1:-1, None] <= pos).sum(-2)                   # (..., size)
    src = perm.gather(-1, slot)
    return src, bounds.gather(-1, src), lengths.gather(-1, src), pos - out_bounds.gather(-1, slot)


def _rows_first(x: torch.Tensor, row_bounds: torch.Tensor, row_perm: torch.Tensor,
                col_bounds: torch.Tensor, col_perm: torch.Tensor, angles: torch.Tensor
                ) -> torch.Tensor:
    """:func:`block_shuffle_rotate` with the rows cut first for every example."""
    n, c, h, w = x.shape
    k = row_perm.shape[1]
    strip, r0, bh, lr = _layout(row_bounds, row_perm, h)                   # (n, h)
    piece, c0, bw, lc = _layout(col_bounds, col_perm, w)                   # (n, k, w)
    idx = strip[:, :, None].expand(n, h, w)
    piece, c0, bw, lc = (v.gather(1, idx) for v in (piece, c0, bw, lc))   # (n, h, w)
    theta = angles.flatten(1).gather(1, (idx * k + piece).flatten(1)).view(n, h, w)
    r0, bh, lr = (v[:, :, None].expand(n, h, w) for v in (r0, bh, lr))
    cy, cx = (bh - 1).to(x.dtype) / 2, (bw - 1).to(x.dtype) / 2
    dy, dx = lr.to(x.dtype) - cy, lc.to(x.dtype) - cx
    cos, sin = theta.cos().to(x.dtype), theta.sin().to(x.dtype)
    sy, sx = cy + cos * dy - sin * dx, cx + sin * dy + cos * dx             # source, in block
    y0, x0 = sy.floor(), sx.floor()
    fy, fx = sy - y0, sx - x0
    y0, x0 = y0.long(), x0.long()
    flat_x = x.flatten(2)
    out = torch.zeros_like(x)
    for oy, ox, weight in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx),
                           (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        ty, tx = y0 + oy, x0 + ox
        inside = (ty >= 0) & (ty < bh) & (tx >= 0) & (tx < bw)
        flat = (r0 + torch.minimum(ty.clamp_min(0), bh - 1)) * w \
            + c0 + torch.minimum(tx.clamp_min(0), bw - 1)
        v = flat_x.gather(2, flat.view(n, 1, h * w).expand(n, c, h * w)).view(n, c, h, w)
        out = out + v * (weight * inside)[:, None]
    return out.clamp(0, 1)


def block_shuffle_rotate(x: torch.Tensor, row_bounds: torch.Tensor, row_perm: torch.Tensor,
                         col_bounds: torch.Tensor, col_perm: torch.Tensor,
                         angles: torch.Tensor, columns_first: torch.Tensor | None = None
                         ) -> torch.Tensor:
    """Apply BSR with explicit per-example choices (k = blocks per axis).

    Args:
        x: (n, C, H, W) in [0, 1].
        row_bounds: (n, k+1) int: the strips along the first axis (0 … its size).
        row_perm: (n, k) int: output strip j is source strip ``row_perm[j]``.
        col_bounds: (n, k, k+1) int: the pieces of source strip i along the other axis.
        col_perm: (n, k, k) int: output piece q of strip i is its piece ``col_perm[i, q]``.
        angles: (n, k, k) radians: the rotation of block (strip i, piece q) of the source.
        columns_first: (n,) bool: for these examples the first axis is the columns (the
            arguments then describe the transposed image); None: rows for all.
    Returns:
        (n, C, H, W) in [0, 1], differentiable w.r.t. x (gathers and bilinear weights).
    """
    args = (row_bounds, row_perm, col_bounds, col_perm, angles)
    if columns_first is None or not bool(columns_first.any()):
        return _rows_first(x, *args)
    if bool(columns_first.all()):
        return _rows_first(x.transpose(2, 3), *args).transpose(2, 3)
    cols = columns_first.nonzero()[:, 0]
    rows = (~columns_first).nonzero()[:, 0]
    a = _rows_first(x[rows], *(v[rows] for v in args))
    b = _rows_first(x[cols].transpose(2, 3), *(v[cols] for v in args)).transpose(2, 3)
    return torch.cat([a, b])[torch.cat([rows, cols]).argsort()]


class BlockShuffleRotate(SeededTransform):
    """The BSR input transform (an :class:`~luring.attacks.iterative.InputTransform`):
    ``num_block`` × ``num_block`` blocks (default 2), shuffled and each rotated by up to
    ``max_angle`` degrees (default 24). Images of any size and channel count (an axis
    shorter than ``num_block`` gets one-pixel and empty blocks). (n, C, H, W) →
    (n, C, H, W) in [0, 1]."""

    stream = "block-shuffle-rotate"

    def __init__(self, num_block: int = 2, max_angle: float = 24.0) -> None:
        super().__init__()
        self.num_block = check_int("num_block", num_block, 1)
        self.max_angle = check_float("max_angle", max_angle, 0.0, 180.0)

    def params(self) -> dict[str, Any]:
        return {"num_block": self.num_block, "max_angle": self.max_angle}

    def __call__(self, x: torch.Tensor, step: int) -> torch.Tensor:
        if self._setup is None:
            return x
        n, _, h, w = x.shape
        k = self.num_block
        draws: list[list[torch.Tensor]] = [[] for _ in range(6)]
        for g in self.generators(n, step):
            first_cols = bool(torch.rand(1, generator=g)[0] < 0.5)
            a, b = (w, h) if first_cols else (h, w)
            parts = (torch.tensor(first_cols), cut_bounds(g, a, k),
                     torch.randperm(k, generator=g),
                     torch.stack([cut_bounds(g, b, k) for _ in range(k)]),
                     torch.stack([torch.randperm(k, generator=g) for _ in range(k)]),
                     (torch.rand(k, k, generator=g) * 2 - 1) * math.radians(self.max_angle))
            for store, v in zip(draws, parts, strict=True):
                store.append(v)
        first_cols_t, rb, rp, cb, cp, ang = (torch.stack(v).to(x.device) for v in draws)
        return block_shuffle_rotate(x, rb, rp, cb, cp, ang, first_cols_t)


class BSR(TransformCopies):
    """BSR (Wang et al., CVPR 2024): MI-FGSM with the gradient averaged over ``num_copies``
    block-shuffled and rotated copies (module docstring).

    Args:
        model: classifier returning logits for (N, C, H, W) images in [0, 1].
        eps: l∞ bound in [0, 1] (default 0.3). steps: iterations (default 10, the paper's).
        alpha: step size (default ``eps / steps``). mu: momentum decay (default 1.0).
        num_block: blocks per axis (default 2). num_copies: copies per iteration (default 20).
        max_angle: largest block rotation in degrees (default 24; 0 = shuffle only).
        grad_transform: optional gradient hook (e.g. ``GaussianSmoothing`` for TI).
        loss, kappa: ``"ce"`` (default) or ``"margin"`` with its cap.
        grad_model: gradient source (e.g. ``bpda(model)`` or an
            :class:`~luring.attacks.ensemble.Ensemble`); default the model.
        seed, batch_size, precision: see :class:`~luring.attacks.base.Attack`.
    """

    name = "bsr"

    def __init__(self, model: nn.Module, eps: float = 0.3, steps: int = 10,
                 alpha: float | None = None, mu: float = 1.0, num_block: int = 2,
                 num_copies: int = 20, max_angle: float = 24.0, *,
                 grad_transform: GradTransform | None = None, loss: str = "ce",
                 kappa: float = 0.0, grad_model: nn.Module | None = None, seed: int = 0,
                 batch_size: int | None = None, precision: str | None = None) -> None:
        super().__init__(model, eps=eps, steps=steps, alpha=alpha, mu=mu,
                         transform=BlockShuffleRotate(num_block, max_angle),
                         num_copies=num_copies, grad_transform=grad_transform, loss=loss,
                         kappa=kappa, grad_model=grad_model, seed=seed,
                         batch_size=batch_size, precision=precision)
