"""Gradient-based analyses: Ω_c (eq. 5, table 10) and saliency maps (figure 3 right).

All functions take models in the mode the caller chose (pass ``.eval()`` models: in train
mode batch norm couples the examples of a batch) and never touch parameter gradients: only
gradients with respect to the input are computed (``torch.autograd.grad``). Inputs are float
NCHW in [0, 1]; the returned gradients are detached, on the input's device, shaped like it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from luring.errors import LuringError

__all__ = [
    "logit_gradients",
    "omega",
    "omega_comparison",
    "component_saliency",
    "input_saliency",
]


def _leaf(x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not torch.is_floating_point(x):
        raise LuringError("gradients need a float input tensor (NCHW in [0, 1])")
    return x.detach().clone().requires_grad_(True)


def logit_gradients(model: nn.Module, x: torch.Tensor,
                    c: int | Sequence[int] | None = None) -> torch.Tensor:
    """∂ logit_c / ∂x for every example of the batch ``x`` (N, *S).

    ``c`` an int → shape (N, *S); a sequence of classes or None (all classes) → (N, K, *S)
    with K = len(c) (or the number of logits). One forward pass, one backward per class.
    """
    xg = _leaf(x)
    with torch.enable_grad():
        logits = model(xg)
        if logits.dim() != 2 or logits.shape[0] != x.shape[0]:
            raise LuringError(f"model must return (N, classes) logits, got {tuple(logits.shape)}")
        k = logits.shape[1]
        classes = [c] if isinstance(c, int) else (list(range(k)) if c is None else list(c))
        for cls in classes:
            if not 0 <= int(cls) < k:
                raise LuringError(f"class {cls} is out of range for a model with {k} logits")
        grads = []
        for i, cls in enumerate(classes):
            (g,) = torch.autograd.grad(logits[:, int(cls)].sum(), xg,
                                       retain_graph=i < len(classes) - 1)
            grads.append(g.detach())
    if isinstance(c, int):
        return grads[0]
    return torch.stack(grads, dim=1)


def omega(grad_m: torch.Tensor, grad_t: torch.Tensor, input_ndim: int = 3) -> torch.Tensor:
    """Ω_c (eq. 5): the number of input dimensions d with ∂ℓ_c/∂x_d · ∂ℓP_c/∂x_d < 0.

    ``grad_m``: gradients of M's logits, ``grad_t``: of M∘P's logits, same shape
    (..., *S) where the last ``input_ndim`` dims (default 3: C, H, W) are the input; every
    value (channel, row, column) is one dimension d. Returns int64 of the leading shape, e.g.
    (N, K) for the (N, K, C, H, W) output of :func:`logit_gradients` with ``c=None``.
    A zero gradient is never counted (the product is not < 0).
    """
    if grad_m.shape != grad_t.shape:
        raise LuringError(
            f"Ω needs gradients of the same shape, got {tuple(grad_m.shape)} and "
            f"{tuple(grad_t.shape)}")
    if grad_m.dim() < input_ndim:
        raise LuringError(f"Ω needs at least {input_ndim} input dims, got {grad_m.dim()}")
    opposite = (grad_m.detach() * grad_t.detach()) < 0
    if input_ndim == 0:
        return opposite.long()
    return opposite.flatten(start_dim=grad_m.dim() - input_ndim).sum(dim=-1)


def omega_comparison(omegas: Mapping[str, torch.Tensor],
                     ref: str = "luring") -> dict[str, dict[str, float | None]]:
    """Table 10: how often Ω_c of ``ref`` is strictly higher than another approach's.

    ``omegas``: approach → (N, K) Ω values on the same N examples. Returns
    ``{other: {"0": rate, ..., "K-1": rate}, ..., "all": {...}}`` where ``rate`` is the
    share of the N examples with Ω_c(ref) > Ω_c(other) (ties do not count) and ``"all"``
    requires Ω_c(ref) to be higher than every other approach's. Class keys are 0-based
    strings (the paper numbers classes 1..10). Rates are None when N = 0.
    """
    if ref not in omegas:
        raise LuringError(f"omega_comparison: reference approach {ref!r} missing; "
                          f"got {', '.join(sorted(omegas)) or 'none'}")
    base = torch.as_tensor(omegas[ref]).detach().cpu()
    if base.dim() != 2:
        raise LuringError(f"Ω values must be (N, classes), got shape {tuple(base.shape)}")
    others = [a for a in omegas if a != ref]
    if not others:
        raise LuringError("omega_comparison needs at least one approach besides the reference")
    n, k = base.shape
    out: dict[str, dict[str, float | None]] = {}
    higher_all = torch.ones(n, k, dtype=torch.bool)
    for name in others:
        o = torch.as_tensor(omegas[name]).detach().cpu()
        if o.shape != base.shape:
            raise LuringError(f"Ω of {name!r} has shape {tuple(o.shape)}, expected "
                              f"{tuple(base.shape)} (same examples and classes as {ref!r})")
        higher = base > o
        higher_all &= higher
        out[name] = _per_class(higher)
    out["all"] = _per_class(higher_all)
    return out


def _per_class(mask: torch.Tensor) -> dict[str, float | None]:
    n = mask.shape[0]
    return {str(c): (float(mask[:, c].double().mean()) if n else None)
            for c in range(mask.shape[1])}


def component_saliency(component: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Mapping gradient of figure 3 (right, bottom): ∇ₓ Σ P(x), summed over all of P's
    outputs for each example; shape like ``x``."""
    xg = _leaf(x)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(component(xg).sum(), xg)
    return g.detach()


def input_saliency(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Figure 3 (right, top): ∇ₓ CE(M(x), y) per example (summed, not averaged, over the
    batch so an example's map does not depend on the batch size); shape like ``x``."""
    xg = _leaf(x)
    with torch.enable_grad():
        loss = F.cross_entropy(model(xg), torch.as_tensor(y, device=x.device).long(),
                               reduction="sum")
        (g,) = torch.autograd.grad(loss, xg)
    return g.detach()
