"""TI, translation invariance (Dong et al. 2019): the input gradient is convolved depthwise
(one kernel per channel, any channel count) with a normalised Gaussian kernel before the
momentum normalisation. MIM-TI = MIM + TI; DIM-TI = MIM + DI + TI.

The kernel follows the original: ``k1 = pdf(linspace(-nsig, nsig, size))``,
``K = outer(k1, k1) / sum``; size 1 is the identity. Even sizes (the paper searched
{3, 5, 10, 15}) are padded asymmetrically, ``(size-1)//2`` before and the rest after (TF's
``SAME``), so the output keeps the input's size.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from luring.attacks.base import check_float, check_int
from luring.attacks.dim import DIM
from luring.attacks.mim import MIM

__all__ = ["gaussian_kernel", "GaussianSmoothing", "MIMTI", "DIMTI"]


def gaussian_kernel(size: int, nsig: float = 3.0) -> torch.Tensor:
    """A (size, size) float32 Gaussian kernel over [-nsig, nsig] that sums to 1."""
    size = check_int("kernel_size", size, 1)
    t = torch.linspace(-nsig, nsig, size, dtype=torch.float64)
    k1 = torch.exp(-0.5 * t * t)
    k = torch.outer(k1, k1)
    return (k / k.sum()).float()


class GaussianSmoothing:
    """Depthwise Gaussian smoothing of a gradient (a
    :class:`~luring.attacks.iterative.GradTransform`): (n, C, H, W) → (n, C, H, W)."""

    def __init__(self, kernel_size: int = 5, nsig: float = 3.0) -> None:
        self.kernel_size = check_int("kernel_size", kernel_size, 1)
        self.nsig = check_float("nsig", nsig, 0.0, 1e3, low_inclusive=False)
        self.kernel = gaussian_kernel(self.kernel_size, self.nsig)
        self._cache: dict[tuple, torch.Tensor] = {}

    def params(self) -> dict[str, Any]:
        return {"kernel_size": self.kernel_size, "nsig": self.nsig}

    def _weight(self, channels: int, like: torch.Tensor) -> torch.Tensor:
        key = (channels, like.device, like.dtype)
        if key not in self._cache:
            k = self.kernel.to(device=like.device, dtype=like.dtype)
            self._cache[key] = k.expand(channels, 1, *k.shape).contiguous()
        return self._cache[key]

    def __call__(self, g: torch.Tensor) -> torch.Tensor:
        if self.kernel_size == 1:
            return g
        s = self.kernel_size
        before, after = (s - 1) // 2, s - 1 - (s - 1) // 2
        padded = F.pad(g, (before, after, before, after))
        return F.conv2d(padded, self._weight(g.shape[1], g), groups=g.shape[1])


class MIMTI(MIM):
    """MIM with TI (kernel ``kernel_size``, nsig 3; the paper's MNIST tables mostly pick 5).
    Other arguments as :class:`~luring.attacks.mim.MIM`."""

    name = "mim-ti"

    def __init__(self, model: nn.Module, eps: float = 0.3, steps: int = 1000, alpha: float = 0.01,
                 mu: float = 1.0, kernel_size: int = 5, *, nsig: float = 3.0,
                 norm: str = "linf", eps_l2: float | None = None, clip_linf: bool = True,
                 loss: str = "ce", kappa: float = 0.0, grad_model: nn.Module | None = None,
                 seed: int = 0, batch_size: int | None = None,
                 precision: str | None = None) -> None:
        super().__init__(model, eps=eps, steps=steps, alpha=alpha, mu=mu, norm=norm,
                         eps_l2=eps_l2, clip_linf=clip_linf,
                         grad_transform=GaussianSmoothing(kernel_size, nsig), loss=loss,
                         kappa=kappa, grad_model=grad_model, seed=seed,
                         batch_size=batch_size,
                         precision=precision)


class DIMTI(DIM):
    """DIM (input diversity, probability ``p``) with TI (``kernel_size``). Other arguments as
    :class:`~luring.attacks.mim.MIM`."""

    name = "dim-ti"

    def __init__(self, model: nn.Module, eps: float = 0.3, steps: int = 1000, alpha: float = 0.01,
                 mu: float = 1.0, p: float = 1.0, kernel_size: int = 5, *, nsig: float = 3.0,
                 norm: str = "linf", eps_l2: float | None = None, clip_linf: bool = True,
                 loss: str = "ce", kappa: float = 0.0, grad_model: nn.Module | None = None,
                 seed: int = 0, batch_size: int | None = None,
                 precision: str | None = None) -> None:
        super().__init__(model, eps=eps, steps=steps, alpha=alpha, mu=mu, p=p, norm=norm,
                         eps_l2=eps_l2, clip_linf=clip_linf,
                         grad_transform=GaussianSmoothing(kernel_size, nsig), loss=loss,
                         kappa=kappa, grad_model=grad_model, seed=seed,
                         batch_size=batch_size,
                         precision=precision)
