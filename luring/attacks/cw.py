"""Carlini & Wagner's l2 attack (2017), untargeted.

Minimise ``||x' - x||_2² + c · max(z_y - max_{j≠y} z_j + κ, 0)`` over ``w`` with
``x' = (tanh(w) + 1) / 2`` (so 0 ≤ x' ≤ 1), by Adam on the offset from ``atanh(2x - 1)``.
The constant ``c`` is binary-searched per example: raised ×10 until a success, then bisected.
At every search step both the offset (the perturbation) and the optimiser state are reset.
The true class is masked with -inf (not 0) when taking the max other logit. The smallest
successful l2 over all steps and iterations is kept; an example that never succeeds comes
back unchanged. Paper (appendix D.2): 10 search steps, learning rate 0.1, initial constant
0.5, 500 iterations.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from luring.attacks.base import (
    Attack,
    adam_step,
    check_float,
    check_int,
    linf_box,
    margin,
)

__all__ = ["CWL2"]


class CWL2(Attack):
    """Carlini-Wagner l2.

    Args:
        model: classifier returning logits for (N, C, H, W) images in [0, 1].
        eps: an optional l∞ cap in [0, 1] on the result (default 1.0: no cap, the paper's CW);
            below 1 the iterate is clipped to the ε-box inside the optimisation.
        steps: Adam iterations per search step (paper 500).
        binary_steps: binary-search steps over the constant (paper 10).
        lr: Adam learning rate (paper 0.1).
        const: initial constant c (paper 0.5).
        confidence: κ ≥ 0, the margin required for a success (default 0).
        seed, batch_size: see :class:`~luring.attacks.base.Attack` (CW draws nothing).

    After a call: ``success`` (N,) bool, ``l2`` (N,) float — the l2 distortion of the
    returned example (0 where it failed) — and ``const`` (N,) the last constant tried.
    """

    name = "cw-l2"

    def __init__(self, model: nn.Module, eps: float = 1.0, steps: int = 500,
                 binary_steps: int = 10, lr: float = 0.1, const: float = 0.5, *,
                 confidence: float = 0.0, seed: int = 0, batch_size: int | None = None) -> None:
        super().__init__(model, eps=eps, seed=seed, batch_size=batch_size)
        self.steps = check_int("steps", steps, 0)
        self.binary_steps = check_int("binary_steps", binary_steps, 1)
        self.lr = check_float("lr", lr, 0.0, 1e3, low_inclusive=False)
        self.const = check_float("const", const, 0.0, 1e10, low_inclusive=False)
        self.confidence = check_float("confidence", confidence, 0.0, 1e6)
        self.success = torch.zeros(0, dtype=torch.bool)
        self.l2 = torch.zeros(0)
        self.final_const = torch.zeros(0)
        self._parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def _params(self) -> dict[str, Any]:
        return {"steps": self.steps, "binary_steps": self.binary_steps, "lr": self.lr,
                "const": self.const, "confidence": self.confidence}

    def _begin(self, n: int) -> None:
        self._parts = []

    def _end(self) -> None:
        if self._parts:
            self.success, self.l2, self.final_const = (torch.cat(t).cpu()
                                                       for t in zip(*self._parts, strict=True))

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None = None, *,
                 start_index: int = 0) -> torch.Tensor:
        out = super().__call__(x, y, start_index=start_index)
        if len(out):
            l2 = (out.double() - x.double()).flatten(1).norm(dim=1).float().cpu()
            self.l2 = torch.where(self.success, l2, torch.zeros_like(l2))
        return out

    def _run(self, x: torch.Tensor, y: torch.Tensor, index0: int) -> torch.Tensor:
        n, shape = len(x), (-1, *([1] * (x.dim() - 1)))
        w0 = torch.atanh((2 * x - 1) * (1 - 1e-6))
        lo, hi = linf_box(x, self.eps)
        lower = torch.zeros(n, dtype=torch.float64, device=x.device)
        upper = torch.full((n,), 1e10, dtype=torch.float64, device=x.device)
        const = torch.full((n,), self.const, dtype=torch.float64, device=x.device)
        best_l2 = torch.full((n,), math.inf, device=x.device)
        best_adv = x.clone()
        for _ in range(self.binary_steps):
            offset = torch.zeros_like(x)                  # reset the perturbation ...
            m, v = torch.zeros_like(x), torch.zeros_like(x)   # ... and Adam
            step_ok = torch.zeros(n, dtype=torch.bool, device=x.device)
            c = const.float().view(shape)
            for t in range(self.steps):
                offset.requires_grad_(True)
                with torch.enable_grad():
                    x_new = (torch.tanh(w0 + offset) + 1) / 2
                    if self.eps < 1:
                        x_new = torch.clamp(x_new, lo, hi)
                    logits = self._logits(x_new)
                    l2sq = (x_new - x).pow(2).flatten(1).sum(1)
                    gap = margin(logits, y)               # max other - true
                    f = (self.confidence - gap).clamp_min(0)
                    loss = (l2sq + c.view(-1) * f).sum()
                    (g,) = torch.autograd.grad(loss, offset)
                self.n_backward += 1
                with torch.no_grad():
                    ok = gap.detach() > self.confidence
                    l2sq = l2sq.detach()
                    step_ok |= ok
                    better = ok & (l2sq < best_l2)
                    best_l2 = torch.where(better, l2sq, best_l2)
                    best_adv = torch.where(better.view(shape), x_new.detach(), best_adv)
                    offset = offset.detach() - adam_step(m, v, g, t, self.lr)
            upper = torch.where(step_ok, torch.minimum(upper, const), upper)
            lower = torch.where(step_ok, lower, torch.maximum(lower, const))
            const = torch.where(upper < 1e9, (lower + upper) / 2, const * 10)
        self._parts.append((torch.isfinite(best_l2), best_l2.sqrt(), const))
        return best_adv
