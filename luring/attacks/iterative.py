"""The one iterative gradient loop every gradient attack runs, with hooks.

Each iteration (``step_grad`` gives the direction, the rest moves along it)::

    p     = grad_point(x_adv, momentum)       # NI: x_adv + mu*alpha*m; else x_adv
    g     = point_grad(p)                     # mean over SI's copies p/2^i of
                                              #   d L(grad_model(input_transform(p/2^i)), y) / dp
    d     = g + v;  v = mean_k point_grad(x_adv + u_k) - g   # VT (u_k ~ U(-βε, βε)); else d = g
    d     = grad_transform(d)                 # TI; identity by default
    d     = accumulate(d, momentum)           # MIM: m = mu*m + d / mean|d|; else d
    x_adv = update(x_adv, d)                  # l∞: + alpha*sign(d); l2: + alpha*d/||d||_2
    x_adv = project(x_adv, x)                 # onto the ε-ball and [0, 1]

L is the loss hook (:mod:`luring.attacks.losses`: cross-entropy or the CW margin) and
``grad_model`` the gradient source (default the attacked model; e.g. its
:func:`~luring.attacks.bpda.bpda` wrapper). With the defaults (no NI, one copy, no VT) an
iteration is exactly one counted forward and one backward pass; SI with ``scales`` = m and
VT with ``neighbors`` = N make ``m·(1 + N)`` sequential passes of the chunk per iteration,
each counted (``n_forward``, ``n_backward`` +1, ``n_queries`` + chunk size).

FGSM, PGD, MIM, DIM, MIM-TI, DIM-TI, NI-FGSM, SI-NI-FGSM, VMI-FGSM and VNI-FGSM are this
loop with different hooks (see their modules): variants compose instead of being copied.
Gradients are taken with ``torch.autograd.grad`` w.r.t. the input only, with the loss
summed over the batch so that an example's gradient does not depend on the rest of the
batch; VT's neighbours are drawn from per-example generators for the same reason.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from luring.attacks.base import (
    Attack,
    check_float,
    check_int,
    example_generators,
    linf_box,
    model_device,
    uniform_noise,
)
from luring.attacks.losses import attack_loss, check_loss
from luring.errors import LuringError

__all__ = ["IterativeAttack", "InputTransform", "GradTransform", "NORMS"]

NORMS = ("linf", "l2")


class InputTransform(Protocol):
    """A differentiable, per-example random input transform (e.g. DI)."""

    def setup(self, n: int, steps: int, seed: int, index0: int, device: torch.device) -> None:
        """Draw the randomness of ``n`` examples (``index0`` ..) for ``steps`` gradient
        evaluations (iterations × evaluations per iteration)."""

    def __call__(self, x: torch.Tensor, step: int) -> torch.Tensor:
        """Transform (n, C, H, W) → (n, C, H, W) at gradient evaluation ``step``."""

    def params(self) -> dict[str, Any]:
        """Its resolved parameters."""


class GradTransform(Protocol):
    """A deterministic gradient transform (e.g. TI smoothing): (n, C, H, W) → same shape."""

    def __call__(self, g: torch.Tensor) -> torch.Tensor: ...

    def params(self) -> dict[str, Any]: ...


class IterativeAttack(Attack):
    """Iterative gradient attack with hooks (see the module docstring).

    Args:
        model: classifier returning logits (N, classes) for images (N, C, H, W) in [0, 1];
            it gives the labels when ``y`` is None.
        eps: l∞ bound in [0, 1] (for ``norm="l2"`` the optional final l∞ clip).
        steps: iterations (≥ 0).
        alpha: step size (l∞ units for ``linf``, l2 length for ``l2``).
        norm: ``"linf"`` or ``"l2"``.
        eps_l2: l2 bound (needed for ``norm="l2"``; the paper: 30 MNIST, 2 SVHN/CIFAR10).
        clip_linf: for ``l2``, clip the final result to the l∞ ``eps`` (paper appendix D.1).
        mu: momentum decay; None = no momentum stage (FGSM/PGD), a float (≥ 0) = MIM.
        random_start: start from a uniform point of the l∞ ε-ball (PGD).
        input_transform, grad_transform: optional hooks (DI, TI).
        loss: ``"ce"`` (cross-entropy, the paper's) or ``"margin"`` (CW logit margin capped
            at ``kappa`` ≥ 0; see :mod:`luring.attacks.losses`).
        grad_model: the module whose forward/backward gives the gradient (e.g.
            ``bpda(model)``; on the model's device); default the model itself.
        nesterov: NI (Lin et al. 2020): take the gradient at ``x_adv + mu·alpha·m`` (needs mu).
        scales: SI: average the gradients of the copies ``x/2^i``, i < scales (1 = off).
        neighbors, beta: VT (Wang & He 2021): ``neighbors`` samples (0 = off) uniform in the
            l∞ ``beta·eps`` box around the iterate tune the next gradient.
        seed, batch_size, precision: see :class:`~luring.attacks.base.Attack`.
    """

    name = "iterative"
    uses_gradients = True

    def __init__(self, model: nn.Module, *, eps: float, steps: int, alpha: float,
                 norm: str = "linf", eps_l2: float | None = None, clip_linf: bool = True,
                 mu: float | None = None, random_start: bool = False,
                 input_transform: InputTransform | None = None,
                 grad_transform: GradTransform | None = None, loss: str = "ce",
                 kappa: float = 0.0, grad_model: nn.Module | None = None,
                 nesterov: bool = False, scales: int = 1, neighbors: int = 0,
                 beta: float = 1.5, seed: int = 0, batch_size: int | None = None,
                 precision: str | None = None) -> None:
        super().__init__(model, eps=eps, seed=seed, batch_size=batch_size,
                         precision=precision)
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
        self.loss, self.kappa = check_loss(loss, kappa)
        self.grad_model = self._check_grad_model(grad_model)
        self.nesterov = bool(nesterov)
        if self.nesterov and self.mu is None:
            raise LuringError("nesterov=True needs a momentum decay mu (the look-ahead is "
                              "x + mu·alpha·momentum)")
        self.scales = check_int("scales", scales, 1)
        self.neighbors = check_int("neighbors", neighbors, 0)
        self.beta = check_float("beta", beta, 0.0, 1e3)
        self._variance: torch.Tensor | None = None
        self._neighbor_gens: list[torch.Generator] = []

    def _check_grad_model(self, grad_model: nn.Module | None) -> nn.Module | None:
        if grad_model is None:
            return None
        if not isinstance(grad_model, nn.Module):
            raise LuringError(f"grad_model must be an nn.Module (e.g. bpda(model)), got "
                              f"{type(grad_model).__name__}")
        a, b = model_device(self.model), model_device(grad_model)
        if a is not None and b is not None and a != b:
            raise LuringError(f"grad_model is on {b} but the model is on {a}; move both to "
                              "one device")
        return grad_model

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
        if self.nesterov:
            out["nesterov"] = True
        if self.scales != 1:
            out["scales"] = self.scales
        if self.neighbors:
            out.update(neighbors=self.neighbors, beta=self.beta)
        out["loss"] = self.loss
        if self.loss == "margin":
            out["kappa"] = self.kappa
        if self.grad_model is not None:
            out["grad_model"] = type(self.grad_model).__name__
        return out

    def _bounds(self) -> dict[str, float | None]:
        if self.norm == "l2":
            return {"linf": self.eps if self.clip_linf else None, "l2": self.eps_l2}
        return {"linf": self.eps, "l2": None}

    def _models(self) -> list[nn.Module]:
        return [self.model] + ([self.grad_model] if self.grad_model is not None else [])

    @property
    def gradient_source(self) -> nn.Module:
        """``grad_model`` when given, else the attacked model."""
        return self.grad_model if self.grad_model is not None else self.model

    @property
    def evals_per_step(self) -> int:
        """Gradient evaluations (forward + backward of the chunk) per iteration."""
        return self.scales * (1 + self.neighbors)

    # ---- hooks -------------------------------------------------------------------------
    def init_adv(self, x: torch.Tensor, index0: int) -> torch.Tensor:
        """Starting point: x, or (``random_start``) x + U(-ε, ε) per example, projected."""
        if not self.random_start or self.eps == 0:
            return x.clone()
        return self.project(x + uniform_noise(x, self.eps, self.seed, index0, "random-start"), x)

    def transform_input(self, x_adv: torch.Tensor, step: int) -> torch.Tensor:
        """The input the model sees at gradient evaluation ``step`` (gradient flows through)."""
        return x_adv if self.input_transform is None else self.input_transform(x_adv, step)

    def transform_grad(self, g: torch.Tensor) -> torch.Tensor:
        """Applied to the raw input gradient, before the momentum normalisation."""
        return g if self.grad_transform is None else self.grad_transform(g)

    def objective(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss ascended, summed over the batch (:func:`~luring.attacks.losses.attack_loss`)."""
        return attack_loss(logits, y, self.loss, self.kappa)

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

    def grad_point(self, x_adv: torch.Tensor, momentum: torch.Tensor | None) -> torch.Tensor:
        """Where the gradient is taken: NI's look-ahead ``x_adv + (mu·alpha)·m``, else x_adv."""
        if not self.nesterov or momentum is None or self.mu is None:
            return x_adv
        return x_adv + (self.mu * self.alpha) * momentum

    def neighbor_noise(self, x_adv: torch.Tensor) -> torch.Tensor:
        """VT's offsets for one iteration: (neighbors, n, C, H, W) uniform in
        [-beta·eps, beta·eps], example i's from its own generator (one draw per iteration)."""
        r = self.beta * self.eps
        shape = (self.neighbors, *x_adv.shape[1:])
        draws = [torch.empty(shape, device=x_adv.device).uniform_(-r, r, generator=g)
                 for g in self._neighbor_gens]
        return torch.stack(draws, 1)

    # ---- the loop ----------------------------------------------------------------------
    def input_grad(self, x_adv: torch.Tensor, y: torch.Tensor, step: int,
                   divisor: int = 1) -> torch.Tensor:
        """d L(grad_model(transform(x_adv / divisor)), y) / d x_adv (summed loss; ``step``
        indexes the input transform's draws): one counted forward, one backward."""
        x_adv = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            x_in = x_adv if divisor == 1 else x_adv / divisor
            logits = self.grad_logits(self.transform_input(x_in, step))
            (g,) = torch.autograd.grad(self.objective(logits, y), x_adv)
        self.n_backward += 1
        return g.contiguous()

    def point_grad(self, point: torch.Tensor, y: torch.Tensor, first: int) -> torch.Tensor:
        """The gradient at ``point``: SI's mean over the copies point/2^i, i < scales (draw
        indices ``first + i``), summed in order and divided by ``scales``; one copy = plain."""
        if self.scales == 1:
            return self.input_grad(point, y, first)
        total = torch.zeros_like(point)
        for i in range(self.scales):
            total += self.input_grad(point, y, first + i, 2 ** i)
        return total / self.scales

    def neighbor_grad(self, x_adv: torch.Tensor, y: torch.Tensor, first: int) -> torch.Tensor:
        """VT: the mean of :meth:`point_grad` over ``neighbors`` points x_adv + u_k."""
        noise = self.neighbor_noise(x_adv)
        total = torch.zeros_like(x_adv)
        for k in range(self.neighbors):
            total += self.point_grad(x_adv + noise[k], y, first + k * self.scales)
        return total / self.neighbors

    def step_grad(self, x_adv: torch.Tensor, y: torch.Tensor, step: int,
                  momentum: torch.Tensor | None) -> torch.Tensor:
        """Iteration ``step``'s direction before the momentum stage: TI(g), or with VT
        TI(g + v) and then ``v ← mean_k point_grad(x_adv + u_k) − g`` (Wang & He 2021)."""
        first = step * self.evals_per_step
        g = self.point_grad(self.grad_point(x_adv, momentum), y, first)
        if not self.neighbors:
            return self.transform_grad(g)
        assert self._variance is not None
        d = g + self._variance
        self._variance = self.neighbor_grad(x_adv, y, first + self.scales) - g
        return self.transform_grad(d)

    def _run(self, x: torch.Tensor, y: torch.Tensor, index0: int) -> torch.Tensor:
        if self.input_transform is not None:
            self.input_transform.setup(len(x), self.steps * self.evals_per_step, self.seed,
                                       index0, x.device)
        x_adv = self.init_adv(x, index0)
        momentum = torch.zeros_like(x) if self.mu is not None else None
        box = linf_box(x, self.eps) if self.norm == "linf" else None  # once per chunk
        if self.neighbors:
            self._variance = torch.zeros_like(x)
            self._neighbor_gens = example_generators(self.seed, index0, len(x),
                                                     "variance-tuning", x.device)
        try:
            for step in range(self.steps):
                g = self.step_grad(x_adv, y, step, momentum)
                x_adv = self.project(self.update(x_adv, self.accumulate(g, momentum)), x, box)
        finally:
            self._variance, self._neighbor_gens = None, []
        return x_adv
