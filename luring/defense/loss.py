"""The training losses of the defense component P.

* :func:`luring_loss` — the paper's equation 2 (section 2.4), the luring loss of Algorithm 1.
* :func:`soft_cross_entropy` — the C_E baseline: cross-entropy between M's softmax (soft
  targets) and T's logits.
* :func:`reconstruction_loss` — the Auto baseline: binary cross-entropy between P(x) and x.

Class b, as the authors' code reads it: T's top class among the classes ≠ M(x). Algorithm 1
line 6 says "the class of the 2nd max value of" T's logits; the two readings agree when T's top
class is M(x) and differ exactly when T(x) ≠ M(x) (there the code's b is T's top class, the
text's is T's second). The report lists this reading among the differences from the paper.

Tie-breaking (documented contract): every "top class" below is ``torch.argmax`` over the
logits, which returns the *lowest index* among equal maxima. The second class of M (``a``) and
the top class of T among classes ≠ y (``b``) are the argmax after the class ``y`` has been
masked out, so they follow the same rule: lowest index first.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from luring.errors import LuringError

__all__ = ["luring_loss", "luring_classes", "soft_cross_entropy", "reconstruction_loss"]


def _check_logits(t_logits: torch.Tensor, m_logits: torch.Tensor) -> None:
    if t_logits.dim() != 2 or m_logits.shape != t_logits.shape:
        raise LuringError(
            f"luring loss needs two (N, C) logit tensors of the same shape, got "
            f"{tuple(t_logits.shape)} and {tuple(m_logits.shape)}"
        )
    if t_logits.shape[1] < 2:
        raise LuringError(f"luring loss needs at least 2 classes, got C = {t_logits.shape[1]}")


def luring_classes(t_logits: torch.Tensor, m_logits: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The classes of equation 2, each int64 of shape (N,).

    ``y`` = M's top class, ``a`` = M's second class, ``b`` = T's top class among the classes
    ≠ y. Ties: lowest class index first (``torch.argmax`` order). Inputs are (N, C) logits,
    C ≥ 2; no gradient is involved.
    """
    _check_logits(t_logits, m_logits)
    with torch.no_grad():
        m = m_logits.detach()
        y = m.argmax(dim=1)
        not_y = F.one_hot(y, m.shape[1]).bool()
        a = m.masked_fill(not_y, -math.inf).argmax(dim=1)
        b = t_logits.detach().masked_fill(not_y, -math.inf).argmax(dim=1)
    return y, a, b


def luring_loss(t_logits: torch.Tensor, m_logits: torch.Tensor, lam: float,
                reduction: str = "mean", *, cap: float | None = None,
                margin: float = 0.0) -> torch.Tensor:
    """Equation 2 of the paper, averaged over the batch.

    ``t_logits``: (N, C) logits of T = M∘P (gradient flows through them);
    ``m_logits``: (N, C) logits of M on the same clean images, used only to pick classes and
    detached (no gradient ever reaches them). With y = argmax M, a = M's second class and
    b = T's top class among classes ≠ y (ties: lowest index first),

        L = -λ (t_y - t_a) + max(0, t_b - t_y).

    ``lam`` (λ) must be a finite number > 0 (1 for MNIST/SVHN, 0.15 for CIFAR10 in the paper).
    ``reduction``: ``"mean"`` (scalar, the default) or ``"none"`` (shape (N,)).

    Options (not in the paper; the defaults give equation 2 exactly):

    * ``cap`` (``None`` or > 0): a bounded first term, ``-λ min(t_y - t_a, cap)``: once T's
      margin between y and a exceeds ``cap`` that term stops pushing (no gradient), so it no
      longer drives T's logits and P's output sigmoid to saturation;
    * ``margin`` (≥ 0): the hinge asks for T's class y to lead b by ``margin``:
      ``max(0, t_b - t_y + margin)``, so that T's decisions are not left at its boundary.

        L = -λ min(t_y - t_a, cap) + max(0, t_b - t_y + margin).
    """
    if not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam <= 0:
        raise LuringError(f"the luring coefficient lambda must be a finite number > 0, got {lam}")
    if reduction not in ("mean", "none"):
        raise LuringError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, float))
                            or not math.isfinite(cap) or cap <= 0):
        raise LuringError(f"the luring cap must be None or a finite number > 0, got {cap!r}")
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) \
            or not math.isfinite(margin) or margin < 0:
        raise LuringError(f"the luring margin must be a finite number ≥ 0, got {margin!r}")
    y, a, b = luring_classes(t_logits, m_logits)
    t_y = t_logits.gather(1, y[:, None]).squeeze(1)
    t_a = t_logits.gather(1, a[:, None]).squeeze(1)
    t_b = t_logits.gather(1, b[:, None]).squeeze(1)
    first = t_y - t_a if cap is None else torch.clamp(t_y - t_a, max=float(cap))
    per_example = -lam * first + torch.clamp(t_b - t_y + float(margin), min=0)
    return per_example.mean() if reduction == "mean" else per_example


def soft_cross_entropy(t_logits: torch.Tensor, m_logits: torch.Tensor) -> torch.Tensor:
    """C_E loss: mean over the batch of ``-sum_c softmax(m)_c log softmax(t)_c``.

    ``t_logits``, ``m_logits``: (N, C); M's logits are detached (soft targets)."""
    _check_logits(t_logits, m_logits)
    target = torch.softmax(m_logits.detach(), dim=1)
    return -(target * torch.log_softmax(t_logits, dim=1)).sum(dim=1).mean()


def reconstruction_loss(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Auto loss: binary cross-entropy between P(x) in (0, 1) and the image x in [0, 1],
    averaged over every pixel. Shapes (N, C, H, W)."""
    return F.binary_cross_entropy(recon.clamp(1e-7, 1 - 1e-7), x)
