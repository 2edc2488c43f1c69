"""FGSM (Goodfellow et al. 2015): one l∞ step of size ε along the sign of the input gradient."""

from __future__ import annotations

from typing import Any

from torch import nn

from luring.attacks.iterative import IterativeAttack

__all__ = ["FGSM"]


class FGSM(IterativeAttack):
    """``x' = clip(x + ε·sign(∇_x CE(model(x), y)), 0, 1)``: the iterative loop with one step
    of size ε, no random start, no momentum.

    Args:
        model: classifier returning logits for (N, C, H, W) images in [0, 1].
        eps: l∞ bound in [0, 1] (default 0.3).
        loss, kappa: ``"ce"`` (default) or ``"margin"`` with its cap (see
            :mod:`luring.attacks.losses`).
        grad_model: gradient source (e.g. ``bpda(model)``); default the model.
        seed, batch_size: see :class:`~luring.attacks.base.Attack` (FGSM draws nothing).
    """

    name = "fgsm"

    def __init__(self, model: nn.Module, eps: float = 0.3, *, loss: str = "ce",
                 kappa: float = 0.0, grad_model: nn.Module | None = None, seed: int = 0,
                 batch_size: int | None = None,
                 precision: str | None = None) -> None:
        super().__init__(model, eps=eps, steps=1, alpha=eps, loss=loss, kappa=kappa,
                         grad_model=grad_model, seed=seed, batch_size=batch_size,
                         precision=precision)

    def _params(self) -> dict[str, Any]:
        keys = ("loss", "kappa", "grad_model")
        return {k: v for k, v in super()._params().items() if k in keys}
