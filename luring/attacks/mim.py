"""MIM, the momentum iterative method (Dong et al. 2018), l∞ or l2.

Per iteration: ``g = mu·g + ∇ / mean|∇|`` (per example; a zero gradient stays zero), then
l∞: ``x ← Π(x + alpha·sign(g))``; l2: ``x ← Π(x + alpha·g/||g||_2)`` with Π the projection
on the ``eps_l2`` ball and [0, 1], and (``clip_linf``, paper appendix D.1) a final clip to
the l∞ ``eps``. Paper defaults: 1000 iterations, step 0.01, mu 1.0; l2 bound 30 (MNIST) or
2 (SVHN, CIFAR10). With ``mu=0`` it is iterative FGSM exactly.
"""

from __future__ import annotations

from torch import nn

from luring.attacks.iterative import GradTransform, InputTransform, IterativeAttack

__all__ = ["MIM"]


class MIM(IterativeAttack):
    """Momentum iterative attack; the base of DIM, MIM-TI and DIM-TI.

    Args:
        model: classifier returning logits for (N, C, H, W) images in [0, 1].
        eps: l∞ bound in [0, 1] (default 0.3); for ``norm="l2"`` the final l∞ clip.
        steps: iterations (paper: 1000 MNIST, 500 SVHN, 100 CIFAR10).
        alpha: step size (paper 0.01; an l2 length for ``norm="l2"``).
        mu: momentum decay (paper 1.0).
        norm: ``"linf"`` (default) or ``"l2"``.
        eps_l2: l2 bound, required for ``norm="l2"``.
        clip_linf: for l2, clip the result to the l∞ ``eps`` (default True, as the paper).
        input_transform, grad_transform: optional DI / TI hooks (used by the variants).
        loss, kappa: ``"ce"`` (default) or ``"margin"`` with its cap (see
            :mod:`luring.attacks.losses`).
        grad_model: gradient source (e.g. ``bpda(model)``); default the model.
        seed, batch_size: see :class:`~luring.attacks.base.Attack`.
    """

    name = "mim"

    def __init__(self, model: nn.Module, eps: float = 0.3, steps: int = 1000, alpha: float = 0.01,
                 mu: float = 1.0, *, norm: str = "linf", eps_l2: float | None = None,
                 clip_linf: bool = True, input_transform: InputTransform | None = None,
                 grad_transform: GradTransform | None = None, loss: str = "ce",
                 kappa: float = 0.0, grad_model: nn.Module | None = None, seed: int = 0,
                 batch_size: int | None = None,
                 precision: str | None = None) -> None:
        super().__init__(model, eps=eps, steps=steps, alpha=alpha, norm=norm, eps_l2=eps_l2,
                         clip_linf=clip_linf, mu=mu, input_transform=input_transform,
                         grad_transform=grad_transform, loss=loss, kappa=kappa,
                         grad_model=grad_model, seed=seed, batch_size=batch_size,
                         precision=precision)
        if self.norm == "l2":
            self.name = f"{type(self).name}-l2"
