"""DI, input diversity (Xie et al. 2019), and DIM = MIM with DI.

At every gradient evaluation, with probability ``p`` per example, the image is shrunk
(nearest interpolation) by ``shrink`` ∈ {1, 2} pixels (a random size in [W-2, W)) and
zero-padded back to W, the padding before the image (top, left) drawn from
{0, …, shrink−1} as in Xie et al.'s and the authors' code (``randint(0, shrink)``, upper
bound excluded: a 1-pixel shrink always sits at the top left). The output keeps the input
size (the paper's models end in dense layers). The transform is a gather, so the gradient
flows through it to the untransformed iterate.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from luring.attacks.base import check_float, example_generators
from luring.attacks.iterative import GradTransform
from luring.attacks.mim import MIM

__all__ = ["DiverseInput", "DIM", "diverse_input"]


def _axis_index(size: int, shrink: torch.Tensor, offset: torch.Tensor,
                apply: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Source indices (n, size) and validity mask (n, size) along one axis.

    Output position a reads the shrunk image at ``r = a - offset`` (zero outside
    ``0 <= r < size - shrink``); the shrunk image reads the source at
    ``floor(r * size / (size - shrink))`` (PyTorch's ``nearest``)."""
    dev = shrink.device
    a = torch.arange(size, device=dev)
    new = (size - shrink).clamp_min(1)                                    # (n,)
    r = a[None, :] - offset[:, None]                                      # (n, size)
    valid = (r >= 0) & (r < new[:, None])
    scale = size / new.to(torch.float32)                                  # float, as nearest
    src = (r.clamp_min(0).to(torch.float32) * scale[:, None]).floor().long().clamp_(0, size - 1)
    src = torch.where(apply[:, None], src, a[None, :].expand_as(src))
    valid = valid | ~apply[:, None]
    return src, valid


def diverse_input(x: torch.Tensor, shrink: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
                  apply: torch.Tensor) -> torch.Tensor:
    """Apply DI with explicit per-example choices.

    Args:
        x: (n, C, H, W).
        shrink: (n,) int in {1, 2}: the image is resized to (H - shrink, W - shrink).
        top, left: (n,) int in [0, shrink]: padding before the resized image (DI draws
            them from {0, …, shrink−1}).
        apply: (n,) bool; False leaves the example unchanged.
    Returns:
        (n, C, H, W), differentiable w.r.t. x.
    """
    n, c, h, w = x.shape
    rows, rvalid = _axis_index(h, shrink, top, apply)
    cols, cvalid = _axis_index(w, shrink, left, apply)
    out = x.gather(2, rows[:, None, :, None].expand(n, c, h, w))
    out = out.gather(3, cols[:, None, None, :].expand(n, c, h, w))
    mask = (rvalid[:, :, None] & cvalid[:, None, :]).to(x.dtype)
    return out * mask[:, None]


class DiverseInput:
    """The DI input transform with probability ``p`` (an
    :class:`~luring.attacks.iterative.InputTransform`). Randomness per example and iteration
    comes from a generator seeded by (seed, example index), drawn once in :meth:`setup`
    (four uniforms per gradient evaluation: apply, shrink, top, left)."""

    def __init__(self, p: float = 1.0) -> None:
        self.p = check_float("p", p, 0.0, 1.0)
        self._draws: torch.Tensor | None = None

    def params(self) -> dict[str, Any]:
        return {"p": self.p}

    def setup(self, n: int, steps: int, seed: int, index0: int, device: torch.device) -> None:
        gens = example_generators(seed, index0, n, "diverse-input", device)
        draws = [torch.rand(max(steps, 1), 4, generator=g, device=device) for g in gens]
        self._draws = torch.stack(draws, 1) if draws else torch.zeros(max(steps, 1), 0, 4)

    def __call__(self, x: torch.Tensor, step: int) -> torch.Tensor:
        if self._draws is None or self.p == 0:
            return x
        u = self._draws[step % len(self._draws)]                          # (n, 4)
        apply = u[:, 0] < self.p
        if not bool(apply.any()):
            return x
        shrink = 1 + (u[:, 1] < 0.5).long()                               # size W-1 or W-2
        top = (u[:, 2] * shrink).floor().long().clamp_max(shrink - 1)        # {0..shrink-1}
        left = (u[:, 3] * shrink).floor().long().clamp_max(shrink - 1)
        return diverse_input(x, shrink, top, left, apply)


class DIM(MIM):
    """MIM with input diversity (probability ``p``; the paper searched 0.1 .. 1.0 and found
    1.0 best on MNIST and SVHN, 0.6 on CIFAR10). Other arguments as :class:`MIM`."""

    name = "dim"

    def __init__(self, model: nn.Module, eps: float = 0.3, steps: int = 1000, alpha: float = 0.01,
                 mu: float = 1.0, p: float = 1.0, *, norm: str = "linf",
                 eps_l2: float | None = None, clip_linf: bool = True,
                 grad_transform: GradTransform | None = None, loss: str = "ce",
                 kappa: float = 0.0, grad_model: nn.Module | None = None, seed: int = 0,
                 batch_size: int | None = None,
                 precision: str | None = None) -> None:
        super().__init__(model, eps=eps, steps=steps, alpha=alpha, mu=mu, norm=norm,
                         eps_l2=eps_l2, clip_linf=clip_linf, input_transform=DiverseInput(p),
                         grad_transform=grad_transform, loss=loss, kappa=kappa,
                         grad_model=grad_model, seed=seed, batch_size=batch_size,
                         precision=precision)
