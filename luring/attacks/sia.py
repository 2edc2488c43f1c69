"""SIA, the structure-invariant transformation (Wang, Zhang & Zhang, ICCV 2023), and the
shared "mean over transformed copies" MI-FGSM that SIA and BSR (:mod:`luring.attacks.bsr`)
are.

SIT: the image is cut into ``num_block`` × ``num_block`` blocks at random cut points
(distinct, drawn per axis from 1 .. size−1, so blocks differ in size) and each block gets
one transformation drawn uniformly from the seven of TransferAttack's ``sia.py``
(Trustworthy-AI-Group/TransferAttack), in this order (:data:`SIA_OPS`):

0. vertical shift: the block rolled down by a random 0 .. h−1 rows (within the block);
1. horizontal shift: rolled right by 0 .. w−1 columns;
2. vertical flip; 3. horizontal flip; 4. rotation by 180°;
5. scale: multiplied by a factor uniform in [0, 1);
6. noise: + uniform noise in [−16/255, 16/255], clipped to [0, 1].

The authors' own code (SIT) also draws resize, DCT low-pass and dropout; TransferAttack and
this module leave those three out. SIA (:class:`SIA`) is MI-FGSM (decay ``mu`` = 1) whose
gradient per iteration is the mean over ``num_copies`` independently transformed copies.
Defaults as TransferAttack and the paper: 3 × 3 blocks, 20 copies, 10 iterations,
``alpha = eps/steps``; ``eps`` 0.3 as the other attacks here (MNIST).

Randomness: the draws of example i at gradient evaluation e come from generators seeded by
``example_seed(seed, index0 + i, stream, e)`` (:func:`evaluation_generators`): the block
layout and transformations from a CPU generator (the same numbers on every device), the
noise from a generator on the images' device; nothing depends on the rest of the batch and
nothing is stored between evaluations (memory does not grow with steps × copies). Each copy
is one counted forward and backward of the chunk (``n_forward``, ``n_backward`` +1,
``n_queries`` + chunk size).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from luring.attacks.base import check_float, check_int, example_seed
from luring.attacks.iterative import GradTransform, InputTransform, IterativeAttack
from luring.utils import make_generator

__all__ = ["SIA_OPS", "SIA_NOISE", "structure_invariant", "StructureInvariant", "SIA",
           "TransformCopies", "SeededTransform", "evaluation_generators", "cut_bounds"]

SIA_OPS = ("vertical_shift", "horizontal_shift", "vertical_flip", "horizontal_flip",
           "rotate_180", "scale", "noise")
#: the noise operation's half-width (TransferAttack's ``add_noise``: 16/255)
SIA_NOISE = 16 / 255
_NOISE_OP = SIA_OPS.index("noise")


def evaluation_generators(seed: int, index0: int, n: int, stream: str, step: int,
                          device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One generator per example ``index0 .. index0+n-1`` for gradient evaluation ``step``,
    seeded by ``example_seed(seed, index, stream, step)``."""
    return [make_generator(example_seed(seed, index0 + i, stream, step), device)
            for i in range(n)]


def cut_bounds(g: torch.Generator, length: int, parts: int) -> torch.Tensor:
    """Block bounds (parts+1,) int64 along an axis of ``length`` ≥ 1 pixels: 0, then
    min(parts, length)−1 distinct sorted cut points drawn from 1 .. length−1, then
    ``length`` (repeated when length < parts: empty trailing blocks). CPU generator."""
    k = min(parts, length) - 1
    pts = (torch.randperm(length - 1, generator=g)[:k] + 1).sort().values
    tail = torch.full((parts - k,), length, dtype=torch.long)
    return torch.cat([torch.zeros(1, dtype=torch.long), pts, tail])


def _axis(bounds: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                     torch.Tensor]:
    """Per position of an axis (n, size): block index, block start, block length, offset
    within the block, for bounds (n, parts+1)."""
    pos = torch.arange(size, device=bounds.device)
    idx = (bounds[:, 1:-1, None] <= pos[None, None, :]).sum(1)              # (n, size)
    start = bounds.gather(1, idx)
    length = bounds.gather(1, idx + 1) - start
    return idx, start, length, pos[None, :] - start


def structure_invariant(x: torch.Tensor, row_bounds: torch.Tensor, col_bounds: torch.Tensor,
                        ops: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
                        noise: torch.Tensor | None = None) -> torch.Tensor:
    """Apply SIT with explicit per-example choices.

    Args:
        x: (n, C, H, W) in [0, 1].
        row_bounds: (n, s+1) int, 0 = b_0 ≤ … ≤ b_s = H (block rows [b_i, b_i+1)).
        col_bounds: (n, t+1) int, likewise up to W.
        ops: (n, s, t) int in [0, 7): the operation of each block (:data:`SIA_OPS`).
        shift: (n, s, t) float in [0, 1): the shifts roll by ``floor(shift · size)`` pixels.
        scale: (n, s, t) float: the scale operation's factor.
        noise: (n, C, H, W) float added in noise blocks (then clipped to [0, 1]); None
            when no block is a noise block.
    Returns:
        (n, C, H, W) in [0, 1], differentiable w.r.t. x (a gather, a product and an add).
    """
    n, c, h, w = x.shape
    t = col_bounds.shape[1] - 1
    bi, r0, bh, lr = _axis(row_bounds, h)
    bj, c0, bw, lc = _axis(col_bounds, w)
    block = (bi[:, :, None] * t + bj[:, None, :]).flatten(1)                # (n, h*w)

    def per_pixel(v: torch.Tensor) -> torch.Tensor:
        return v.flatten(1).gather(1, block).view(n, h, w)

    op, u, factor = per_pixel(ops), per_pixel(shift), per_pixel(scale)
    lr, bh, r0 = (v[:, :, None].expand(n, h, w) for v in (lr, bh, r0))
    lc, bw, c0 = (v[:, None, :].expand(n, h, w) for v in (lc, bw, c0))
    down = torch.minimum((u * bh).floor().long(), bh - 1)
    right = torch.minimum((u * bw).floor().long(), bw - 1)
    src_r = torch.where(op == 0, torch.remainder(lr - down, bh), lr)
    src_c = torch.where(op == 1, torch.remainder(lc - right, bw), lc)
    src_r = torch.where((op == 2) | (op == 4), bh - 1 - lr, src_r)
    src_c = torch.where((op == 3) | (op == 4), bw - 1 - lc, src_c)
    flat = ((r0 + src_r) * w + c0 + src_c).view(n, 1, h * w).expand(n, c, h * w)
    out = x.flatten(2).gather(2, flat).view(n, c, h, w)
    out = out * torch.where(op == 5, factor, torch.ones_like(factor))[:, None]
    if noise is not None:
        out = torch.where((op == _NOISE_OP)[:, None], (out + noise).clamp(0, 1), out)
    return out


class SeededTransform:
    """Shared state of the per-evaluation seeded input transforms (SIT, BSR): ``setup``
    records the chunk's first example index, size, seed and device; the draws of gradient
    evaluation ``step`` come from :func:`evaluation_generators` (nothing is pre-drawn)."""

    stream = "seeded-transform"

    def __init__(self) -> None:
        self._setup: tuple[int, int, int, torch.device] | None = None

    def setup(self, n: int, steps: int, seed: int, index0: int, device: torch.device) -> None:
        self._setup = (n, seed, index0, torch.device(device))

    def generators(self, n: int, step: int, suffix: str = "",
                   device: torch.device | str = "cpu") -> list[torch.Generator]:
        """Example i's generator for evaluation ``step`` (``n`` examples of the chunk)."""
        assert self._setup is not None
        _, seed, index0, _ = self._setup
        return evaluation_generators(seed, index0, n, self.stream + suffix, step, device)


class StructureInvariant(SeededTransform):
    """The SIT input transform (an :class:`~luring.attacks.iterative.InputTransform`):
    ``num_block`` × ``num_block`` blocks (default 3, the paper's and TransferAttack's), one
    random operation of :data:`SIA_OPS` each; images of any size and channel count (an axis
    shorter than ``num_block`` gets one-pixel blocks). (n, C, H, W) → (n, C, H, W) in [0, 1]."""

    stream = "structure-invariant"

    def __init__(self, num_block: int = 3) -> None:
        super().__init__()
        self.num_block = check_int("num_block", num_block, 1)

    def params(self) -> dict[str, Any]:
        return {"num_block": self.num_block}

    def __call__(self, x: torch.Tensor, step: int) -> torch.Tensor:
        if self._setup is None:
            return x
        n, c, h, w = x.shape
        s = self.num_block
        rows, cols, draws = [], [], []
        for g in self.generators(n, step):
            rows.append(cut_bounds(g, h, s))
            cols.append(cut_bounds(g, w, s))
            draws.append(torch.rand(3, s, s, generator=g))
        dev = x.device
        u = torch.stack(draws).to(dev)                                       # (n, 3, s, s)
        ops = (u[:, 0] * len(SIA_OPS)).long().clamp_max(len(SIA_OPS) - 1)
        noisy = (ops == _NOISE_OP).flatten(1).any(1).tolist()
        noise = None
        if any(noisy):
            gens = self.generators(n, step, "-noise", dev)
            zero = torch.zeros(c, h, w, device=dev)
            noise = torch.stack([
                torch.empty(c, h, w, device=dev).uniform_(-SIA_NOISE, SIA_NOISE, generator=g)
                if flag else zero for g, flag in zip(gens, noisy, strict=True)])
        return structure_invariant(x, torch.stack(rows).to(dev), torch.stack(cols).to(dev),
                                   ops, u[:, 1], u[:, 2], noise)


class TransformCopies(IterativeAttack):
    """l∞ MI-FGSM whose gradient per iteration is the mean of the input gradients of
    ``num_copies`` transformed copies of the iterate (copy k of iteration t is gradient
    evaluation ``t·num_copies + k`` of the transform; each one counted forward and
    backward). The base of :class:`SIA` and :class:`~luring.attacks.bsr.BSR`.

    Args:
        model: classifier returning logits for (N, C, H, W) images in [0, 1].
        eps: l∞ bound in [0, 1]. steps: iterations. alpha: step size (None: eps/steps).
        mu: momentum decay (1.0: MI-FGSM).
        transform: the per-evaluation random input transform.
        num_copies: transformed copies per iteration (≥ 1).
        grad_transform: optional gradient hook (e.g. TI's smoothing).
        loss, kappa, grad_model, seed, batch_size, precision: as
            :class:`~luring.attacks.iterative.IterativeAttack`.
    """

    def __init__(self, model: nn.Module, *, eps: float, steps: int, alpha: float | None,
                 mu: float, transform: InputTransform, num_copies: int,
                 grad_transform: GradTransform | None = None, loss: str = "ce",
                 kappa: float = 0.0, grad_model: nn.Module | None = None, seed: int = 0,
                 batch_size: int | None = None, precision: str | None = None) -> None:
        eps = check_float("eps", eps, 0.0, 1.0)
        steps = check_int("steps", steps, 0)
        self.num_copies = check_int("num_copies", num_copies, 1)
        super().__init__(model, eps=eps, steps=steps,
                         alpha=eps / max(steps, 1) if alpha is None else alpha, mu=mu,
                         input_transform=transform, grad_transform=grad_transform,
                         loss=loss, kappa=kappa, grad_model=grad_model, seed=seed,
                         batch_size=batch_size, precision=precision)

    @property
    def evals_per_step(self) -> int:
        """Gradient evaluations per iteration: one per copy."""
        return self.num_copies

    def point_grad(self, point: torch.Tensor, y: torch.Tensor, first: int) -> torch.Tensor:
        """The mean over copies k < num_copies of the gradient through the transform's draw
        ``first + k``, summed in order and divided by ``num_copies``."""
        if self.num_copies == 1:
            return self.input_grad(point, y, first)
        total = torch.zeros_like(point)
        for k in range(self.num_copies):
            total += self.input_grad(point, y, first + k)
        return total / self.num_copies

    def _params(self) -> dict[str, Any]:
        out = super()._params()
        out["num_copies"] = self.num_copies
        return out


class SIA(TransformCopies):
    """SIA (Wang, Zhang & Zhang, ICCV 2023): MI-FGSM with the gradient averaged over
    ``num_copies`` SIT copies (module docstring).

    Args:
        model: classifier returning logits for (N, C, H, W) images in [0, 1].
        eps: l∞ bound in [0, 1] (default 0.3). steps: iterations (default 10, the paper's).
        alpha: step size (default ``eps / steps``). mu: momentum decay (default 1.0).
        num_block: blocks per axis (default 3). num_copies: copies per iteration (default 20).
        grad_transform: optional gradient hook (e.g. ``GaussianSmoothing`` for TI).
        loss, kappa: ``"ce"`` (default) or ``"margin"`` with its cap.
        grad_model: gradient source (e.g. ``bpda(model)`` or an
            :class:`~luring.attacks.ensemble.Ensemble`); default the model.
        seed, batch_size, precision: see :class:`~luring.attacks.base.Attack`.
    """

    name = "sia"

    def __init__(self, model: nn.Module, eps: float = 0.3, steps: int = 10,
                 alpha: float | None = None, mu: float = 1.0, num_block: int = 3,
                 num_copies: int = 20, *, grad_transform: GradTransform | None = None,
                 loss: str = "ce", kappa: float = 0.0, grad_model: nn.Module | None = None,
                 seed: int = 0, batch_size: int | None = None,
                 precision: str | None = None) -> None:
        super().__init__(model, eps=eps, steps=steps, alpha=alpha, mu=mu,
                         transform=StructureInvariant(num_block), num_copies=num_copies,
                         grad_transform=grad_transform, loss=loss, kappa=kappa,
                         grad_model=grad_model, seed=seed, batch_size=batch_size,
                         precision=precision)
