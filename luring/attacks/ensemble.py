"""Ensembles of models as one gradient source (or one attacked classifier).

``Ensemble(models, weights=None, mode="logits")`` is an ``nn.Module`` over K members that
share one device and one set of classes; ``weights`` (default equal) are normalised to sum
to 1. Two ways to fuse the members:

* ``mode="logits"`` (default): the forward is the weighted average of the members' logits,
  ``Σ_k w_k z_k`` (N, classes) — Dong et al. 2018 (MI-FGSM, section 3.2), who found it
  better than fusing the predicted probabilities (Liu et al. 2017) or the losses. It is an
  ordinary classifier: use it as ``grad_model=`` of any gradient attack, or as the attacked
  model itself (labels and success then come from the averaged logits).
* ``mode="loss"``: the loss is averaged instead, ``Σ_k w_k L(z_k, y)`` with L the attack's
  loss hook (cross-entropy or margin). The forward returns the members' logits stacked,
  (N, K, classes) — example first, so an attack's chunks and batched passes slice it as
  logits — which only an attack with the :class:`EnsembleLoss` objective reads: build it with
  :func:`with_ensemble_loss` (``with_ensemble_loss(MIM)(model, grad_model=ens)``) or a
  subclass ``class EnsembleMIM(EnsembleLoss, MIM)``. A loss-mode ensemble is a gradient
  source only; to attack the ensemble itself pass ``ens.with_mode("logits")`` as the model.

Members may be any classifiers returning logits (N, classes), e.g. ``bpda(T)`` wrappers
(:func:`~luring.attacks.bpda.bpda`) for straight-through gradients of some members only.
Members on different devices, or whose outputs disagree on the number of classes, are a
one-line :class:`~luring.errors.LuringError`. The weighted sums run in member order
(deterministic); with two equal weights an ensemble of a model with itself gives that
model's logits and gradients bit for bit.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from luring.attacks.base import model_device
from luring.attacks.iterative import IterativeAttack
from luring.attacks.losses import attack_loss
from luring.errors import LuringError

__all__ = ["ENSEMBLE_MODES", "Ensemble", "EnsembleLoss", "with_ensemble_loss"]

ENSEMBLE_MODES = ("logits", "loss")


def _weights(weights: Sequence[float] | None, k: int) -> tuple[float, ...]:
    """``weights`` checked (K finite numbers ≥ 0, positive sum) and normalised to sum 1."""
    if weights is None:
        return tuple(1.0 / k for _ in range(k))
    try:
        ws = [float(w) for w in weights]
    except (TypeError, ValueError):
        raise LuringError(f"ensemble weights must be numbers, got {weights!r}") from None
    if len(ws) != k:
        raise LuringError(f"ensemble weights: {len(ws)} given for {k} models; give one per "
                          "model")
    if any(not math.isfinite(w) or w < 0 for w in ws) or sum(ws) <= 0:
        raise LuringError(f"ensemble weights must be finite, ≥ 0 and not all 0, got {ws}")
    total = sum(ws)
    return tuple(w / total for w in ws)


class Ensemble(nn.Module):
    """K classifiers fused by their logits or by their losses (see the module docstring).

    Args:
        models: the members (``nn.Module`` each, returning logits (N, classes) for images
            (N, C, H, W) in [0, 1]); one device for all.
        weights: one number ≥ 0 per member (default equal), normalised to sum to 1.
        mode: ``"logits"`` (forward: weighted mean logits (N, classes)) or ``"loss"``
            (forward: stacked logits (N, K, classes) for :class:`EnsembleLoss`).
    """

    def __init__(self, models: Sequence[nn.Module], weights: Sequence[float] | None = None,
                 mode: str = "logits") -> None:
        super().__init__()
        if isinstance(models, nn.Module) or not isinstance(models, Sequence):
            raise LuringError("Ensemble needs a list of models, got "
                              f"{type(models).__name__}")
        if not models:
            raise LuringError("Ensemble needs at least one model")
        bad = [type(m).__name__ for m in models if not isinstance(m, nn.Module)]
        if bad:
            raise LuringError(f"ensemble members must be nn.Modules, got {', '.join(bad)}")
        if mode not in ENSEMBLE_MODES:
            raise LuringError(f"unknown ensemble mode {mode!r}; choose logits (average the "
                              "logits) or loss (average the per-model losses)")
        devices = list(dict.fromkeys(str(d) for m in models
                                     if (d := model_device(m)) is not None))
        if len(devices) > 1:
            raise LuringError(f"ensemble members are on several devices ({', '.join(devices)});"
                              " move them to one device")
        self.members = nn.ModuleList(models)
        self.weights = _weights(weights, len(models))
        self.mode = mode

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, weights={list(self.weights)}"

    def with_mode(self, mode: str) -> Ensemble:
        """The same members and weights in another mode (members shared, not copied)."""
        return Ensemble(list(self.members), self.weights, mode)

    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's logits, stacked: (N, K, classes)."""
        outs = [m(x) for m in self.members]
        shapes = [tuple(o.shape) for o in outs]
        if any(len(s) != 2 for s in shapes) or len({s for s in shapes}) > 1:
            classes = ", ".join(str(s[1]) if len(s) == 2 else f"shape {s}" for s in shapes)
            raise LuringError(f"ensemble members disagree on the number of classes ({classes}); "
                              "every member must return logits (N, classes) for the same classes")
        return torch.stack(outs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) → weighted mean logits (N, classes) (``logits``) or stacked logits
        (N, K, classes) (``loss``)."""
        z = self.member_logits(x)
        if self.mode == "loss":
            return z
        out = z[:, 0] * self.weights[0]
        for k in range(1, len(self.weights)):
            out = out + z[:, k] * self.weights[k]
        return out

    def loss(self, z: torch.Tensor, y: torch.Tensor, loss: str = "ce",
             kappa: float = 0.0) -> torch.Tensor:
        """``Σ_k w_k L(z[:, k], y)`` for stacked logits z (N, K, classes) and labels y (N,),
        each L summed over the batch (:func:`~luring.attacks.losses.attack_loss`); 0-dim."""
        if z.dim() != 3 or z.shape[1] != len(self.weights):
            raise LuringError(f"the per-model ensemble loss needs stacked logits (N, "
                              f"{len(self.weights)}, classes), got {tuple(z.shape)}")
        total = attack_loss(z[:, 0], y, loss, kappa) * self.weights[0]
        for k in range(1, len(self.weights)):
            total = total + attack_loss(z[:, k], y, loss, kappa) * self.weights[k]
        return total


class EnsembleLoss(IterativeAttack):
    """The objective hook of the per-model ensemble loss, to combine with any iterative
    attack class (``class EnsembleMIM(EnsembleLoss, MIM)``, or :func:`with_ensemble_loss`):
    when the gradient source is an :class:`Ensemble` in mode ``"loss"`` the attack ascends
    ``Σ_k w_k L(z_k, y)`` (its ``loss``/``kappa``); otherwise the attack's own objective.
    A loss-mode ensemble as the attacked model is refused (its forward is no classifier)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if isinstance(self.model, Ensemble) and self.model.mode == "loss":
            raise LuringError("an Ensemble in mode 'loss' is a gradient source: pass it as "
                              "grad_model= and attack a classifier, e.g. ens.with_mode('logits')")

    def objective(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        src = self.grad_model
        if isinstance(src, Ensemble) and src.mode == "loss":
            return src.loss(logits, y, self.loss, self.kappa)
        return super().objective(logits, y)


@functools.cache
def with_ensemble_loss(cls: type[IterativeAttack]) -> type[IterativeAttack]:
    """``cls`` with the :class:`EnsembleLoss` objective (one class per ``cls``, same name
    and arguments): ``with_ensemble_loss(MIM)(model, grad_model=Ensemble(ms, mode="loss"))``."""
    if not (isinstance(cls, type) and issubclass(cls, IterativeAttack)):
        raise LuringError(f"with_ensemble_loss needs an iterative attack class, got {cls!r}")
    if issubclass(cls, EnsembleLoss):
        return cls
    return type(f"{cls.__name__}EnsembleLoss", (EnsembleLoss, cls),
                {"__doc__": f"{cls.__name__} with the per-model ensemble loss hook.",
                 "__module__": __name__})
