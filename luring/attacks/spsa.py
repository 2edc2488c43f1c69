"""SPSA (Uesato et al. 2018): a gradient-free l∞ attack.

Each iteration estimates the gradient of the objective *at the current iterate* x_t
(not at ``2x + δv``, cleverhans issue #1249) from antithetic pairs::

    ĝ = 1/P · Σ_p [f(x_t + δ v_p) - f(x_t - δ v_p)] / (2δ) · v_p,   v_p ∈ {-1, +1}^D

with independent Rademacher directions per image, then takes an Adam ascent step
(lr 0.1) and projects onto the ε-ball and [0, 1]. ``samples`` counts model evaluations per
iteration (P = samples / 2 pairs; paper: δ = 0.01, 128 samples, 100 iterations). The sample
dimension is processed ``chunk_size`` evaluations per image at a time: one forward per chunk
evaluates every image of the batch, so memory is bounded whatever ``samples`` is.

Directions are a counter-based hash of (seed, example index, iteration, sample, pixel), not
a stateful generator: the same example gets the same directions whatever its batch, the
chunk size or the device (no global RNG is touched). The random start uses a per-example
``torch.Generator`` on the input device.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from luring.attacks.base import (
    Attack,
    adam_step,
    check_float,
    check_int,
    eval_frozen,
    example_seed,
    linf_box,
    margin,
    uniform_noise,
)
from luring.errors import LuringError
from luring.utils import check_images

__all__ = ["SPSA", "rademacher"]

_M32 = 0xFFFFFFFF


def _mul32(a: torch.Tensor, c: int) -> torch.Tensor:
    """``a * c mod 2**32`` for int64 ``a`` in [0, 2**32) without int64 overflow."""
    lo, hi = a & 0xFFFF, a >> 16
    return (lo * c + (((hi * (c & 0xFFFF)) & 0xFFFF) << 16)) & _M32


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixer (Wellons' "lowbias32") on int64 tensors."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def rademacher(keys: torch.Tensor, start: int, count: int, dim: int) -> torch.Tensor:
    """Directions ±1 (float32) of shape (n, count, dim) for samples ``start .. start+count-1``
    of the examples whose 32-bit stream keys are ``keys`` (n,) int64."""
    counter = (torch.arange(start, start + count, device=keys.device)[:, None] * dim
               + torch.arange(dim, device=keys.device)[None, :]) & _M32
    bits = _hash32(keys[:, None, None] ^ counter[None]) & 1
    return bits.to(torch.float32).mul_(2).sub_(1)


class SPSA(Attack):
    """SPSA l∞ attack with Adam.

    Args:
        model: classifier returning logits for (N, C, H, W) images in [0, 1].
        eps: l∞ bound in [0, 1] (default 0.3).
        steps: iterations (paper 100).
        samples: model evaluations per iteration and image, even (paper 128 = 64 pairs).
        delta: finite-difference radius (paper 0.01).
        lr: Adam learning rate (paper 0.1).
        loss: ``"margin"`` (max other logit - true logit, default) or ``"ce"``; ascended.
        chunk_size: evaluations per image per forward pass (memory control; the result does
            not depend on it beyond float rounding).
        random_start: start from x + U(-ε, ε) (as cleverhans; default True).
        beta1, beta2, adam_eps: Adam constants.
        seed, batch_size: see :class:`~luring.attacks.base.Attack`.
    """

    name = "spsa"

    def __init__(self, model: nn.Module, eps: float = 0.3, steps: int = 100, samples: int = 128,
                 delta: float = 0.01, lr: float = 0.1, *, loss: str = "margin",
                 chunk_size: int = 128, random_start: bool = True, beta1: float = 0.9,
                 beta2: float = 0.999, adam_eps: float = 1e-8, seed: int = 0,
                 batch_size: int | None = None) -> None:
        super().__init__(model, eps=eps, seed=seed, batch_size=batch_size)
        self.steps = check_int("steps", steps, 0)
        self.samples = check_int("samples", samples, 2)
        if self.samples % 2:
            raise LuringError(f"samples must be even (antithetic pairs), got {samples}")
        self.delta = check_float("delta", delta, 0.0, 1.0, low_inclusive=False)
        self.lr = check_float("lr", lr, 0.0, 1e3, low_inclusive=False)
        if loss not in ("margin", "ce"):
            raise LuringError(f"unknown SPSA loss {loss!r}; choose margin or ce")
        self.loss = loss
        self.chunk_size = check_int("chunk_size", chunk_size, 2)
        self.random_start = bool(random_start)
        self.beta1 = check_float("beta1", beta1, 0.0, 1.0, high_inclusive=False)
        self.beta2 = check_float("beta2", beta2, 0.0, 1.0, high_inclusive=False)
        self.adam_eps = check_float("adam_eps", adam_eps, 0.0, 1.0, low_inclusive=False)

    def _params(self) -> dict[str, Any]:
        return {"steps": self.steps, "samples": self.samples, "delta": self.delta,
                "lr": self.lr, "loss": self.loss, "chunk_size": self.chunk_size,
                "random_start": self.random_start, "beta1": self.beta1, "beta2": self.beta2,
                "adam_eps": self.adam_eps}

    def objective(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-example objective to *maximise* (N,): the margin or the cross-entropy."""
        if self.loss == "margin":
            return margin(logits, y)
        return F.cross_entropy(logits, y, reduction="none")

    @torch.no_grad()
    def _estimate(self, x_adv: torch.Tensor, y: torch.Tensor, iteration: int,
                  index0: int) -> torch.Tensor:
        n, shape = len(x_adv), x_adv.shape[1:]
        dim = x_adv[0].numel()
        keys = torch.tensor([example_seed(self.seed, index0 + i, "spsa", iteration) & _M32
                             for i in range(n)], dtype=torch.int64, device=x_adv.device)
        pairs, per_chunk = self.samples // 2, max(1, self.chunk_size // 2)
        grad = torch.zeros(n, dim, dtype=torch.float64, device=x_adv.device)
        flat = x_adv.reshape(n, 1, dim)
        for s0 in range(0, pairs, per_chunk):
            k = min(per_chunk, pairs - s0)
            v = rademacher(keys, s0, k, dim)                                # (n, k, D)
            dv = v * self.delta
            batch = torch.cat([flat + dv, flat - dv], 1).view(n * 2 * k, *shape)
            f = self.objective(self._logits(batch), y.repeat_interleave(2 * k)).view(n, 2, k)
            w = (f[:, 0] - f[:, 1]) / (2 * self.delta)                      # (n, k)
            grad += torch.bmm(w[:, None, :].to(v.dtype), v)[:, 0].double()
        return (grad / pairs).to(x_adv.dtype).view_as(x_adv)

    def estimate_gradient(self, x: torch.Tensor, y: torch.Tensor | None = None, *,
                          iteration: int = 0, start_index: int = 0) -> torch.Tensor:
        """The SPSA estimate of ∇_x objective at ``x`` (N, C, H, W) → (N, C, H, W), with the
        directions of iteration ``iteration``. Adds to the pass counters."""
        check_images(x, name="x")
        dev = self.device or x.device
        x0 = x.detach().to(device=dev, dtype=torch.float32)
        with eval_frozen(self.model):
            y0 = self.predict(x0) if y is None else self._check_labels(y, len(x0)).to(dev)
            return self._estimate(x0, y0, iteration, start_index).to(x.device)

    @torch.no_grad()
    def _run(self, x: torch.Tensor, y: torch.Tensor, index0: int) -> torch.Tensor:
        lo, hi = linf_box(x, self.eps)
        x_adv = x.clone()
        if self.random_start and self.eps > 0:
            noise = uniform_noise(x, self.eps, self.seed, index0, "spsa-start")
            x_adv = torch.clamp(x + noise, lo, hi)
        m = torch.zeros_like(x)
        v = torch.zeros_like(x)
        for t in range(self.steps):
            g = self._estimate(x_adv, y, t, index0)
            x_adv = x_adv + adam_step(m, v, g, t, self.lr, self.beta1, self.beta2,
                                      self.adam_eps)
            x_adv = torch.clamp(x_adv, lo, hi)
        return x_adv
