"""BPDA (Athalye et al. 2018) for saturating layers: the forward pass is the model's, the
backward of every saturating elementwise op is the straight-through estimate (the incoming
gradient, unchanged).

A luring component P ends in ``nn.Sigmoid`` and most of its output pixels sit where the
sigmoid is flat, so the input gradients of T = M∘P nearly vanish (gradient masking). With
``grad_model=bpda(T)`` a gradient attack follows ``dT/dx`` with P's output sigmoid replaced
by the identity in the backward pass, while its labels (and any success check) still come
from T itself::

    atk = MIM(T, eps=0.2, steps=20, alpha=0.02, loss="margin", grad_model=bpda(T))

Covered (forward value exactly the original's; backward = identity in the op's input):

* ``torch.sigmoid`` / ``Tensor.sigmoid`` / ``torch.special.expit`` (so ``nn.Sigmoid`` and
  ``F.sigmoid``), ``torch.tanh`` / ``Tensor.tanh`` (``nn.Tanh``, ``F.tanh``);
* ``F.hardtanh`` and ``F.relu6`` (``nn.Hardtanh``, ``nn.ReLU6``);
* ``torch.clamp`` / ``torch.clip`` and the Tensor methods, *when both bounds are given*
  (a one-sided ``clamp(min=0)`` is a ReLU, not a saturating box, and is left alone);
* the in-place forms (``sigmoid_``, ``tanh_``, ``clamp_``, ``clip_``, ``hardtanh_``,
  ``inplace=True``).

These are intercepted with a :class:`torch.overrides.TorchFunctionMode` active only during
the wrapper's forward, so modules and functional calls inside any ``forward`` are covered
alike and the user's model is not modified (nor copied). Not covered: TorchScript modules
(the mode does not reach into them), ops called with ``out=``, and the gradient with
respect to tensor-valued clamp bounds (None). Other ops (ReLU, softmax, ...) keep their
true gradients.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from luring.errors import LuringError

__all__ = ["BPDA", "bpda", "StraightThrough"]


def _present(*names: str) -> set[Any]:
    out = set()
    for name in names:
        obj: Any = torch
        for part in name.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is not None:
            out.add(obj)
    return out


_UNARY = _present("sigmoid", "Tensor.sigmoid", "special.expit", "nn.functional.sigmoid",
                  "tanh", "Tensor.tanh", "nn.functional.tanh")
_UNARY_INPLACE = _present("sigmoid_", "Tensor.sigmoid_", "tanh_", "Tensor.tanh_")
_CLAMP = _present("clamp", "clip", "Tensor.clamp", "Tensor.clip")
_CLAMP_INPLACE = _present("clamp_", "clip_", "Tensor.clamp_", "Tensor.clip_")
_BOX = {F.hardtanh, F.relu6}                    # two-sided boxes; in place with inplace=True
_BOX_INPLACE = _present("nn.functional.hardtanh_")


class _Identity(torch.autograd.Function):
    """``fn(x)`` forward, the incoming gradient backward (w.r.t. x only)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, fn: Any, inplace: bool) -> torch.Tensor:
        out = fn(x)
        if inplace:
            ctx.mark_dirty(x)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return grad, None, None


def _both_bounds(args: tuple, kwargs: dict) -> bool:
    lo = args[1] if len(args) > 1 else kwargs.get("min")
    hi = args[2] if len(args) > 2 else kwargs.get("max")
    return lo is not None and hi is not None


def _kind(func: Any, args: tuple, kwargs: dict) -> str | None:
    """``"out"`` / ``"inplace"`` for a covered call, None for any other."""
    if "out" in kwargs:
        return None
    if func in _UNARY:
        return "out"
    if func in _UNARY_INPLACE or func in _BOX_INPLACE:
        return "inplace"
    if func in _CLAMP:
        return "out" if _both_bounds(args, kwargs) else None
    if func in _CLAMP_INPLACE:
        return "inplace" if _both_bounds(args, kwargs) else None
    if func in _BOX:
        pos = 3 if func is F.hardtanh else 1
        inplace = kwargs.get("inplace", args[pos] if len(args) > pos else False)
        return "inplace" if inplace else "out"
    return None


class StraightThrough(TorchFunctionMode):
    """While active, the covered saturating ops (module docstring) of a tensor that requires
    a gradient get the straight-through backward; everything else runs unchanged."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        kind = _kind(func, args, kwargs)
        x = args[0] if args else None
        if (kind is None or not isinstance(x, torch.Tensor) or not x.requires_grad
                or not torch.is_grad_enabled()):
            return func(*args, **kwargs)
        rest = args[1:]
        return _Identity.apply(x, lambda t: func(t, *rest, **kwargs), kind == "inplace")


class BPDA(nn.Module):
    """``model`` with straight-through gradients for its saturating layers (see the module
    docstring). The forward value is exactly ``model(x)``; ``model`` is a submodule (not a
    copy: its parameters, buffers and modes are shared) and is never modified."""

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise LuringError(f"bpda needs an nn.Module, got {type(model).__name__}")
        super().__init__()
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with StraightThrough():
            return self.model(*args, **kwargs)


def bpda(model: nn.Module) -> BPDA:
    """The BPDA gradient source for ``model`` (returned as is when it already is one), for
    an attack's ``grad_model=``."""
    return model if isinstance(model, BPDA) else BPDA(model)
