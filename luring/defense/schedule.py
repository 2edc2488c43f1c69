"""P's optimisation schedule and weight averaging, shared by the training loop of
:mod:`luring.defense.train`: the learning rate at a fractional epoch (warm-up, piecewise
milestones, cosine or linear decay), the step budget, and the exponential moving average of
the trained weights and batch-norm statistics used for held-out evaluation."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

__all__ = ["lr_at", "budget", "averaged_tensors", "averaged_weights"]


def lr_at(settings: dict[str, Any], epoch: float) -> float:
    """Learning rate at training progress ``epoch`` (fractional epochs done, ≥ 0): linear
    warm-up over ``warmup_epochs``, then piecewise milestones, cosine or linear decay."""
    lr = float(settings["lr"])
    total = float(settings["epochs"])
    warm = float(settings.get("warmup_epochs", 0.0))
    if warm > 0 and epoch < warm:
        return lr * max(epoch, 1e-3 * warm) / warm
    decay = settings.get("lr_decay", "piecewise")
    if decay == "piecewise":
        for start, value in sorted(settings.get("lr_milestones", []), key=lambda m: m[0]):
            if epoch >= start:
                lr = float(value)
        return lr
    lo = float(settings.get("min_lr", 0.0))
    frac = min(max((epoch - warm) / max(total - warm, 1e-9), 0.0), 1.0)
    if decay == "cosine":
        return lo + (lr - lo) * 0.5 * (1 + math.cos(math.pi * frac))
    return lr + (lo - lr) * frac


def budget(settings: dict[str, Any], steps_per_epoch: int) -> tuple[int, float]:
    """(total optimisation steps, fraction of the nominal schedule): ``epochs × steps per
    epoch``, cut to ``max_steps`` when set. The schedule runs in nominal epochs: step k is at
    ``k / (steps_per_epoch × fraction)`` epochs, so the whole schedule fits the budget."""
    nominal = int(settings["epochs"]) * steps_per_epoch
    ms = settings.get("max_steps")
    total = nominal if ms is None else min(nominal, int(ms))
    return total, total / max(nominal, 1)


def averaged_tensors(params: list[torch.Tensor], modules: list[nn.Module]
                      ) -> list[torch.Tensor]:
    """What weight averaging averages: the trained parameters and the floating-point buffers
    (batch-norm running means and variances) of the trained modules, so that the averaged
    model is evaluated with statistics that follow its averaged weights, not the raw ones."""
    buffers = [b for m in modules for b in m.buffers() if b.is_floating_point()]
    return list(params) + buffers


@contextlib.contextmanager
def averaged_weights(params: list[torch.Tensor], shadow: list[torch.Tensor] | None
                     ) -> Iterator[None]:
    """Temporarily put the exponential moving average (``shadow``) of the weights and
    batch-norm statistics into ``params``; a no-op without averaging."""
    if shadow is None:
        yield
        return
    with torch.no_grad():
        backup = [p.detach().clone() for p in params]
        for p, sh in zip(params, shadow, strict=True):
            p.copy_(sh)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, b in zip(params, backup, strict=True):
                p.copy_(b)
