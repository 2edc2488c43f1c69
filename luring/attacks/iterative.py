"""The one iterative gradient loop every gradient attack runs, with hooks.

Each iteration does exactly one counted forward and one backward pass::

    x_in  = input_transform(x_adv)            # DI; identity by default
    g     = d CE(model(x_in), y) / d x_adv     # ascend the loss (untargeted)
    g     = grad_transform(g)                 # TI; identity by default
    d     = accumulate(g, momentum)           # MIM: m = mu*m + g / mean|g|; else d = g
    x_adv = update(x_adv, d)                  # l∞: + alpha*sign(d); l2: + alpha*d/||d||_2
    x_adv = project(x_adv, x)                 # onto the ε-ball and [0, 1]

FGSM, PGD, MIM, DIM, MIM-TI and DIM-TI are this loop with different hooks (see their
modules): variants compose instead of being copied. Gradients are taken with
``torch.autograd.grad`` w.r.t. the input only, with the loss summed over the batch so that
an example's gradient does not depend on the rest of the batch.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from luring.attacks.base import Attack, check_float, check_int, linf_box, uniform_noise
from luring.errors import LuringError

__all__ = ["IterativeAttack", "InputTransform", "GradTransform", "NORMS"]

NORMS = ("linf", "l2")


class InputTransform(Protocol):
    """A differentiable, per-example random input transform (e.g. DI)."""

    def setup(self, n: int, steps: int, seed: int, index0: int, device: torch.device) -> None:
        """Draw the randomness of ``n`` examples (``index0`` ..) for ``steps`` iterations."""

    def __call__(self, x: torch.Tensor, step: int) -> torch.Tensor:
        """Transform (n, C, H, W) → (n, C, H, W) at iteration ``step``."""

    def params(self) -> dict[str, Any]:
        """Its resolved parameters."""


class GradTransform(Protocol):
    """A deterministic gradient transform (e.g. TI smoothing): (n, C, H, W) → same shape."""

    def __call__(self, g: torch.Tensor) -> torch.Tensor: ...

    def params(self) -> dict[str, Any]: ...


class IterativeAttack(Attack):
    """Iterative gradient attack with hooks (see the module docstring).

    Args:
        model: classifier returning logits (N, classes) for images (N, C, H, W) in [0, 1].
        eps: l∞ bound in [0, 1] (for ``norm="l2"`` the optional final l∞ clip).
        steps: iterations (≥ 0).
        alpha: step size (l∞ units for ``linf``, l2 length for ``l2``).
        norm: ``"linf"`` or ``"l2"``.
        eps_l2: l2 bound (needed for ``norm="l2"``; the paper: 30 MNIST, 2 SVHN/CIFAR10).
        clip_linf: for ``l2``, clip the final result to the l∞ ``eps`` (paper appendix D.1).
        mu: momentum decay; None = no momentum stage (FGSM/PGD), a float (≥ 0) = MIM.
        random_start: start from a uniform point of the l∞ ε-ball (PGD).
        input_transform, grad_transform: optional hooks (DI, TI).
        seed, batch_size: see :class:`~luring.attacks.base.Attack`.
    """

    name = "iterative"

    def __init__(self, model: nn.Module, *, eps: float, steps: int, alpha: float,
                 norm: str = "linf", eps_l2: float | None = None, clip_linf: bool = True,
                 mu: float | None = None, random_start: bool = False,
                 input_transform: InputTransform | None = None,
                 grad_transform: GradTransform | None = None, seed: int = 0,
                 batch_size: int | None = None) -> None:
        super().__init__(model, eps=eps, seed=seed, batch_size=batch_size)
        if norm not in NORMS:
            raise LuringError(f"unknown norm {norm!r}; choose linf or l2")
        self.norm = norm
        self.steps = check_int("steps", steps, 0)
        self.alpha = check_float("alpha", alpha, 0.0, 1e6)
        self.mu = None if mu is None else check_float("mu", mu, 0.0, 1e6)
        self.random_start = bool(random_start)
        self.clip_linf = bool(clip_linf)
        if norm == "l2":
            if eps_l2 is None:
                raise LuringError("norm='l2' needs eps_l2 (the l2 bound; the paper uses 30 on "
                                  "MNIST and 2 on SVHN and CIFAR10)")
            self.eps_l2: float | None = check_float("eps_l2", eps_l2, 0.0, 1e6)
        else:
            self.eps_l2 = None
        self.input_transform = input_transform
        self.grad_transform = grad_transform

    def _params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"steps": self.steps, "alpha": self.alpha, "norm": self.norm}
        if self.norm == "l2":
            out.update(eps_l2=self.eps_l2, clip_linf=self.clip_linf)
        if self.mu is not None:
            out["mu"] = self.mu
        out["random_start"] = self.random_start
        for hook in (self.input_transform, self.grad_transform):
            if hook is not None:
                out.update(hook.params())
        return out

    def _bounds(self) -> dict[str, float | None]:
        if self.norm == "l2":
            return {"linf": self.eps if self.clip_linf else None, "l2": self.eps_l2}
        return {"linf": self.eps, "l2": None}

    # ---- hooks -------------------------------------------------------------------------
    def init_adv(self, x: torch.Tensor, index0: int) -> torch.Tensor:
        """Starting point: x, or (``random_start``) x + U(-ε, ε) per example, projected."""
        if not self.random_start or self.eps == 0:
            return x.clone()
        return self.project(x + uniform_noise(x, self.eps, self.seed, index0, "random-start"), x)

    def transform_input(self, x_adv: torch.Tensor, step: int) -> torch.Tensor:
        """The input the model sees at iteration ``step`` (gradient flows through it)."""
        return x_adv if self.input_transform is None else self.input_transform(x_adv, step)

    def transform_grad(self, g: torch.Tensor) -> torch.Tensor:
        """Applied to the raw input gradient, before the momentum normalisation."""
        return g if self.grad_transform is None else self.grad_transform(g)

    def accumulate(self, g: torch.Tensor, momentum: torch.Tensor | None) -> torch.Tensor:
        """MIM (Dong et al. 2018): ``m = mu*m + g / mean|g|`` per example (a zero gradient
        stays zero); updates ``momentum`` in place and returns it. Without momentum: g."""
        if momentum is None or self.mu is None:
            return g
        scale = g.abs().flatten(1).mean(1)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return momentum.mul_(self.mu).addcdiv_(g, scale.view(-1, *([1] * (g.dim() - 1))))

    def update(self, x_adv: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """One ascent step along direction ``d``."""
        if self.norm == "linf":
            return torch.add(x_adv, d.sign(), alpha=self.alpha)
        norm = d.flatten(1).norm(dim=1)
        norm = torch.where(norm > 0, norm, torch.ones_like(norm))
        return x_adv + (self.alpha / norm).view(-1, *([1] * (d.dim() - 1))) * d

    def project(self, x_adv: torch.Tensor, x: torch.Tensor,
                box: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Onto the l∞ ε-ball (or the l2 ``eps_l2``-ball) around x, then into [0, 1]. For l∞,
        ``box`` may pass ``linf_box(x, eps)`` computed once for many calls."""
        if self.norm == "linf":
            lo, hi = box if box is not None else linf_box(x, self.eps)
            return torch.clamp(x_adv, lo, hi)
        d = x_adv - x
        norm = d.flatten(1).norm(dim=1)
        scale = torch.where(norm > self.eps_l2, self.eps_l2 / norm.clamp_min(1e-12),
                            torch.ones_like(norm))
        return (x + d * scale.view(-1, *([1] * (d.dim() - 1)))).clamp_(0, 1)

    # ---- the loop ----------------------------------------------------------------------
    def input_grad(self, x_adv: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor:
        """d CE(model(transform(x_adv)), y) / d x_adv (summed loss): one forward, one backward."""
        x_adv = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(self._logits(self.transform_input(x_adv, step)), y,
                                   reduction="sum")
            (g,) = torch.autograd.grad(loss, x_adv)
        self.n_backward += 1
        return g

    def _run(self, x: torch.Tensor, y: torch.Tensor, index0: int) -> torch.Tensor:
        if self.input_transform is not None:
            self.input_transform.setup(len(x), self.steps, self.seed, index0, x.device)
        x_adv = self.init_adv(x, index0)
        momentum = torch.zeros_like(x) if self.mu is not None else None
        box = linf_box(x, self.eps) if self.norm == "linf" else None  # once per chunk
        for step in range(self.steps):
            g = self.transform_grad(self.input_grad(x_adv, y, step))
            x_adv = self.project(self.update(x_adv, self.accumulate(g, momentum)), x, box)
        return x_adv
