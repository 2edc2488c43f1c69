"""The losses a gradient attack ascends (a hook of the iterative loop).

* ``"ce"``: the cross-entropy ``CE(z, y)`` (the paper's, and the default).
* ``"margin"``: the Carlini–Wagner logit margin, capped at the confidence ``kappa`` ≥ 0::

      L(z, y) = min(max_{j≠y} z_j − z_y, kappa)

  i.e. ``clamp(margin(z, y), max=kappa)``. It is > 0 exactly when the prediction is not y;
  its gradient is ``e_{j*} − e_y`` (j* the best other class) while the margin is at most
  kappa and zero beyond, so an example stops being pushed once it is misclassified with
  confidence kappa (CW's ``f(x') = max(z_y − max_{j≠y} z_j, −kappa)``, negated). A larger
  kappa asks for high-confidence examples, which transfer better. The true class is masked
  with −inf (not 0) before the max (:func:`luring.attacks.base.margin`).

Both are per example and summed over the batch, so an example's gradient does not depend on
the rest of its batch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from luring.attacks.base import check_float, margin
from luring.errors import LuringError

__all__ = ["LOSSES", "check_loss", "attack_loss"]

LOSSES = ("ce", "margin")
#: the largest confidence accepted (logit margins beyond this mean an unbounded margin)
KAPPA_MAX = 1e6


def check_loss(loss: Any, kappa: Any) -> tuple[str, float]:
    """``(loss, kappa)`` validated: a name of :data:`LOSSES` and a finite kappa in
    [0, 1e6], or a one-line LuringError."""
    if loss not in LOSSES:
        raise LuringError(f"unknown loss {loss!r}; choose ce (cross-entropy) or margin "
                          "(Carlini-Wagner logit margin)")
    return str(loss), check_float("kappa", kappa, 0.0, KAPPA_MAX)


def attack_loss(logits: torch.Tensor, y: torch.Tensor, loss: str = "ce",
                kappa: float = 0.0) -> torch.Tensor:
    """The loss to ascend, summed over the batch (a 0-dim tensor).

    Args:
        logits: (N, classes) float. y: (N,) int64 labels to move away from.
        loss: ``"ce"`` or ``"margin"``. kappa: the margin's cap (ignored for ``"ce"``).
    """
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction="sum")
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise LuringError(f"the margin loss needs logits of shape (N, classes ≥ 2), got "
                          f"{tuple(logits.shape)}")
    return margin(logits, y).clamp(max=kappa).sum()
