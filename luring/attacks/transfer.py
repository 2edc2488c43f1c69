"""Transfer attacks on the one iterative loop: NI-FGSM and SI-NI-FGSM (Lin et al. 2020),
VMI-FGSM and VNI-FGSM (Wang & He 2021). All are l∞ momentum attacks (decay ``mu``) whose
iteration ``t`` is, with Π the projection on the ε-ball and [0, 1]::

    p     = x_t + mu·alpha·m_t                     (NI, SI-NI, VNI; VMI: p = x_t)
    g     = mean_{i<scales} ∇_x L(x/2^i) at p      (SI-NI: scales = 5; else one copy)
    d     = g + v_t                                (VMI, VNI; else d = g)
    m_t+1 = mu·m_t + TI(d) / mean|TI(d)|           (per example; TI optional)
    v_t+1 = mean_{k<neighbors} ∇L(x_t + u_k) − g   (u_k uniform in [-beta·ε, beta·ε]^(C×H×W))
    x_t+1 = Π(x_t + alpha·sign(m_t+1))

with L the loss hook (cross-entropy by default; ``loss="margin"``: the CW margin) and ∇ taken
through ``input_transform`` (DI) and on ``grad_model`` when given. This is the step order of
the papers' code and of torchattacks (``NIFGSM``, ``SINIFGSM``, ``VMIFGSM``, ``VNIFGSM``), so
on the same model and images NI-FGSM and SI-NI-FGSM give the same pixels as torchattacks (up
to the float rounding of its projection ``x + clip(x' − x)``); VMI/VNI draw their neighbours
from per-example seeded generators instead of the global RNG (batch-invariant and
reproducible), so they agree with torchattacks when fed the same draws.

Defaults: the papers' 10 iterations, decay 1, ``alpha = eps/steps``, SI's 5 copies, VT's 20
neighbours at beta = 1.5 (torchattacks defaults to 5 neighbours); ``eps`` 0.3 as the other
attacks here (MNIST). Cost per iteration: ``scales·(1 + neighbors)`` counted gradient
evaluations of the chunk, run one after another (see :mod:`luring.attacks.iterative`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from luring.attacks.base import check_float, check_int
from luring.attacks.dim import DiverseInput
from luring.attacks.iterative import GradTransform, InputTransform, IterativeAttack
from luring.attacks.ti import GaussianSmoothing
from luring.errors import LuringError

__all__ = ["NIFGSM", "SINIFGSM", "VMIFGSM", "VNIFGSM"]


def _hooks(p: float | None, kernel_size: int | None, input_transform: InputTransform | None,
           grad_transform: GradTransform | None
           ) -> tuple[InputTransform | None, GradTransform | None]:
    """DI from ``p`` and TI from ``kernel_size`` (None: off), or the hooks given."""
    if p is not None:
        if input_transform is not None:
            raise LuringError("pass either p (input diversity) or input_transform, not both")
        input_transform = DiverseInput(p)
    if kernel_size is not None:
        if grad_transform is not None:
            raise LuringError("pass either kernel_size (TI) or grad_transform, not both")
        grad_transform = GaussianSmoothing(kernel_size)
    return input_transform, grad_transform


class _Transfer(IterativeAttack):
    """The shared constructor (see the module docstring for the arguments)."""

    _nesterov = True
    _si = False
    _vt = False

    def __init__(self, model: nn.Module, eps: float = 0.3, steps: int = 10,
                 alpha: float | None = None, mu: float = 1.0, *, scales: int = 1,
                 neighbors: int = 0, beta: float = 1.5, p: float | None = None,
                 kernel_size: int | None = None,
                 input_transform: InputTransform | None = None,
                 grad_transform: GradTransform | None = None, loss: str = "ce",
                 kappa: float = 0.0, grad_model: nn.Module | None = None, seed: int = 0,
                 batch_size: int | None = None,
                 precision: str | None = None) -> None:
        eps = check_float("eps", eps, 0.0, 1.0)
        steps = check_int("steps", steps, 0)
        if alpha is None:
            alpha = eps / max(steps, 1)
        di, ti = _hooks(p, kernel_size, input_transform, grad_transform)
        super().__init__(model, eps=eps, steps=steps, alpha=alpha, mu=mu,
                         input_transform=di, grad_transform=ti, loss=loss, kappa=kappa,
                         grad_model=grad_model, nesterov=self._nesterov, scales=scales,
                         neighbors=neighbors, beta=beta, seed=seed, batch_size=batch_size,
                         precision=precision)

    def _params(self) -> dict[str, Any]:
        out = super()._params()
        out.pop("nesterov", None)                 # implied by the attack's name
        if self._si:
            out["scales"] = self.scales
        if self._vt:
            out.update(neighbors=self.neighbors, beta=self.beta)
        return out


class NIFGSM(_Transfer):
    """NI-FGSM (Lin et al. 2020): MI-FGSM with the gradient at the Nesterov look-ahead
    ``x + mu·alpha·m``.

    Args:
        model: classifier returning logits for (N, C, H, W) images in [0, 1].
        eps: l∞ bound in [0, 1] (default 0.3). steps: iterations (default 10).
        alpha: step size (default ``eps / steps``). mu: momentum decay (default 1.0).
        p: input-diversity probability (DI, off by default). kernel_size: TI kernel (off).
        input_transform, grad_transform: DI / TI hooks instead of ``p`` / ``kernel_size``.
        loss, kappa: ``"ce"`` (default) or ``"margin"`` with its cap.
        grad_model: gradient source (e.g. ``bpda(model)``); default the model.
        seed, batch_size: see :class:`~luring.attacks.base.Attack`.
    """

    name = "ni-fgsm"

    def __init__(self, model: nn.Module, eps: float = 0.3, steps: int = 10,
                 alpha: float | None = None, mu: float = 1.0, *, p: float | None = None,
                 kernel_size: int | None = None,
                 input_transform: InputTransform | None = None,
                 grad_transform: GradTransform | None = None, loss: str = "ce",
                 kappa: float = 0.0, grad_model: nn.Module | None = None, seed: int = 0,
                 batch_size: int | None = None,
                 precision: str | None = None) -> None:
        super().__init__(model, eps, steps, alpha, mu, p=p, kernel_size=kernel_size,
                         input_transform=input_transform, grad_transform=grad_transform,
                         loss=loss, kappa=kappa, grad_model=grad_model, seed=seed,
                         batch_size=batch_size,
                         precision=precision)


class SINIFGSM(_Transfer):
    """SI-NI-FGSM (Lin et al. 2020): NI-FGSM whose gradient is the mean over the scale
    copies ``x/2^i``, i < ``scales`` (default 5; ``scales=1`` is NI-FGSM exactly). Other
    arguments as :class:`NIFGSM`."""

    name = "si-ni-fgsm"
    _si = True

    def __init__(self, model: nn.Module, eps: float = 0.3, steps: int = 10,
                 alpha: float | None = None, mu: float = 1.0, scales: int = 5, *,
                 p: float | None = None, kernel_size: int | None = None,
                 input_transform: InputTransform | None = None,
                 grad_transform: GradTransform | None = None, loss: str = "ce",
                 kappa: float = 0.0, grad_model: nn.Module | None = None, seed: int = 0,
                 batch_size: int | None = None,
                 precision: str | None = None) -> None:
        super().__init__(model, eps, steps, alpha, mu, scales=scales, p=p,
                         kernel_size=kernel_size, input_transform=input_transform,
                         grad_transform=grad_transform, loss=loss, kappa=kappa,
                         grad_model=grad_model, seed=seed, batch_size=batch_size,
                         precision=precision)


class VMIFGSM(_Transfer):
    """VMI-FGSM (Wang & He 2021): MI-FGSM whose gradient is tuned by the variance
    ``v = mean_k ∇L(x + u_k) − ∇L(x)`` of the previous iteration, ``neighbors`` samples
    (default 20) uniform in the l∞ ``beta·eps`` box (beta default 1.5), drawn per example
    from generators seeded by (seed, example index). Other arguments as :class:`NIFGSM`."""

    name = "vmi-fgsm"
    _nesterov = False
    _vt = True

    def __init__(self, model: nn.Module, eps: float = 0.3, steps: int = 10,
                 alpha: float | None = None, mu: float = 1.0, neighbors: int = 20,
                 beta: float = 1.5, *, p: float | None = None, kernel_size: int | None = None,
                 input_transform: InputTransform | None = None,
                 grad_transform: GradTransform | None = None, loss: str = "ce",
                 kappa: float = 0.0, grad_model: nn.Module | None = None, seed: int = 0,
                 batch_size: int | None = None,
                 precision: str | None = None) -> None:
        check_int("neighbors", neighbors, 1)
        super().__init__(model, eps, steps, alpha, mu, neighbors=neighbors, beta=beta, p=p,
                         kernel_size=kernel_size, input_transform=input_transform,
                         grad_transform=grad_transform, loss=loss, kappa=kappa,
                         grad_model=grad_model, seed=seed, batch_size=batch_size,
                         precision=precision)


class VNIFGSM(VMIFGSM):
    """VNI-FGSM (Wang & He 2021): VMI-FGSM with NI's look-ahead gradient (the neighbours
    stay around the iterate). Arguments as :class:`VMIFGSM`."""

    name = "vni-fgsm"
    _nesterov = True
