"""PGD (Madry et al. 2018), l∞, with a random start: the paper's step 0.01, 1000 iterations."""

from __future__ import annotations

from torch import nn

from luring.attacks.iterative import IterativeAttack

__all__ = ["PGD"]


class PGD(IterativeAttack):
    """Projected gradient ascent on the loss (cross-entropy by default) in the l∞ ε-ball.

    ``x_0 = x + U(-ε, ε)`` (per example, seeded by example index; ``random_start=False``
    starts at x), then ``x_{t+1} = Π(x_t + alpha·sign(∇))``.

    Args:
        model: classifier returning logits for (N, C, H, W) images in [0, 1].
        eps: l∞ bound in [0, 1] (default 0.3).
        steps: iterations (paper: 1000; callers usually pass fewer).
        alpha: step size (paper: 0.01).
        random_start: start from a uniform point of the ball (default True).
        loss, kappa: ``"ce"`` (default) or ``"margin"`` with its cap (see
            :mod:`luring.attacks.losses`).
        grad_model: gradient source (e.g. ``bpda(model)``); default the model.
        seed, batch_size: see :class:`~luring.attacks.base.Attack`.
    """

    name = "pgd"

    def __init__(self, model: nn.Module, eps: float = 0.3, steps: int = 1000, alpha: float = 0.01,
                 *, random_start: bool = True, loss: str = "ce", kappa: float = 0.0,
                 grad_model: nn.Module | None = None, seed: int = 0,
                 batch_size: int | None = None,
                 precision: str | None = None) -> None:
        super().__init__(model, eps=eps, steps=steps, alpha=alpha, random_start=random_start,
                         loss=loss, kappa=kappa, grad_model=grad_model, seed=seed,
                         batch_size=batch_size,
                         precision=precision)
