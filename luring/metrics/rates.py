"""Rates with a Wilson interval, and the paper's transfer metrics (eq. 3, eq. 4, table 8).

Notation (paper section 3.2 and 4.1): ``y`` are the true labels, ``t_pred`` the predictions of
the augmented model T = M∘P and ``m_pred`` those of the target model M, all on the same inputs
(adversarial examples x' crafted on T, or clean images for the table-8 rates). Every function
takes 1-D integer tensors (or anything :func:`torch.as_tensor` accepts) of one length N and
returns a :class:`Rate`: a plain-float value, its numerator ``k``, its denominator ``n`` and
a Wilson score 95% interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from luring.errors import LuringError
from luring.utils import Z95, wilson_interval

__all__ = [
    "Z95",
    "Rate",
    "wilson_interval",
    "rate",
    "correct",
    "dac_ok",
    "adversarial_accuracy",
    "disagreement_rate",
    "inefficient_rate",
    "dac",
    "clean_accuracy",
    "agreement",
    "false_alarm_rate",
    "transfer_metrics",
    "worst_case",
]


@dataclass(frozen=True)
class Rate:
    """A proportion ``k / n`` with a Wilson score interval ``[ci_low, ci_high]``.

    With ``n == 0`` the proportion is undefined: ``value``, ``ci_low`` and ``ci_high`` are
    ``None`` (JSON ``null``), never NaN and never a division error.
    """

    value: float | None
    k: int
    n: int
    ci_low: float | None
    ci_high: float | None

    def to_dict(self) -> dict[str, Any]:
        """``{"value", "k", "n", "ci": [low, high]}`` with plain Python numbers (or None)."""
        return {"value": self.value, "k": self.k, "n": self.n,
                "ci": [self.ci_low, self.ci_high]}

    @classmethod
    def of(cls, k: int, n: int, z: float = Z95) -> Rate:
        """The rate ``k / n`` with its Wilson interval (``n == 0`` → all-None, see class)."""
        k, n = int(k), int(n)
        if n < 0 or k < 0 or k > n:
            raise LuringError(f"a rate needs 0 <= k <= n, got k={k}, n={n}")
        if n == 0:
            return cls(None, 0, 0, None, None)
        low, high = wilson_interval(k, n, z)
        return cls(k / n, k, n, low, high)


def _labels(name: str, v: Any) -> torch.Tensor:
    """``v`` as a 1-D int64 CPU tensor, or a one-line LuringError."""
    t = torch.as_tensor(v).detach().cpu()
    if t.dim() == 0:
        t = t.reshape(1)
    if t.dim() != 1:
        raise LuringError(
            f"{name} must be a 1-D tensor of class indices, got shape {tuple(t.shape)}; "
            "take argmax over the logits first")
    if t.numel() and (t.is_floating_point() or t.is_complex()):
        raise LuringError(f"{name} must hold integer class indices, got dtype {t.dtype}")
    return t.long()


def _same(**tensors: Any) -> list[torch.Tensor]:
    """Convert every keyword argument with :func:`_labels` and check the lengths agree."""
    out = [_labels(name, v) for name, v in tensors.items()]
    lengths = {len(t) for t in out}
    if len(lengths) > 1:
        sizes = ", ".join(f"{name}={len(t)}" for name, t in zip(tensors, out, strict=True))
        raise LuringError(f"predictions and labels must have the same length, got {sizes}")
    return out


def rate(mask: Any, where: Any = None) -> Rate:
    """The rate of True in boolean ``mask`` (N,), optionally restricted to ``where`` (N,)."""
    m = torch.as_tensor(mask).detach().cpu().reshape(-1).bool()
    if where is not None:
        w = torch.as_tensor(where).detach().cpu().reshape(-1).bool()
        if w.shape != m.shape:
            raise LuringError(f"rate mask and selection differ in length: {len(m)} vs {len(w)}")
        m = m[w]
    return Rate.of(int(m.sum()), int(m.numel()))


def correct(pred: Any, y: Any) -> torch.Tensor:
    """Per example: ``pred == y`` (bool, shape (N,))."""
    p, t = _same(pred=pred, y=y)
    return p == t


def dac_ok(t_pred: Any, m_pred: Any, y: Any) -> torch.Tensor:
    """Per example: detected (T(x') ≠ M(x')) or well predicted by M (M(x') = y); bool (N,).
    Its mean is the DAC of eq. 4."""
    t, m, yy = _same(t_pred=t_pred, m_pred=m_pred, y=y)
    return ~((t == m) & (m != yy))


def adversarial_accuracy(pred: Any, y: Any) -> Rate:
    """Accuracy on the adversarial set: AC_{M∘P} with T's predictions, AC_M with M's."""
    return rate(correct(pred, y))


def disagreement_rate(t_pred: Any, m_pred: Any, y: Any) -> Rate:
    """DR (eq. 3): among x' that fool T (T(x') ≠ y), the share where M(x') ≠ T(x')."""
    t, m, yy = _same(t_pred=t_pred, m_pred=m_pred, y=y)
    fooled = t != yy
    return Rate.of(int((fooled & (t != m)).sum()), int(fooled.sum()))


def inefficient_rate(t_pred: Any, m_pred: Any, y: Any) -> Rate:
    """IAR (eq. 3): among x' that fool T (T(x') ≠ y), the share where M(x') = y."""
    t, m, yy = _same(t_pred=t_pred, m_pred=m_pred, y=y)
    fooled = t != yy
    return Rate.of(int((fooled & (m == yy)).sum()), int(fooled.sum()))


def dac(t_pred: Any, m_pred: Any, y: Any) -> Rate:
    """DAC (eq. 4): ``1 − #{T(x') = M(x') and M(x') ≠ y} / |X'|`` (k counts the complement)."""
    return rate(dac_ok(t_pred, m_pred, y))


def clean_accuracy(pred: Any, y: Any) -> Rate:
    """Test-set accuracy (table 8, TEST column)."""
    return rate(correct(pred, y))


def agreement(t_pred: Any, m_pred: Any, y: Any) -> Rate:
    """Table 8 AGREE: T and M agree on the ground-truth label (T(x) = M(x) = y)."""
    t, m, yy = _same(t_pred=t_pred, m_pred=m_pred, y=y)
    return rate((t == yy) & (m == yy))


def false_alarm_rate(t_pred: Any, m_pred: Any) -> Rate:
    """Share of inputs where T(x) ≠ M(x): on clean images, the detector's false alarms."""
    t, m = _same(t_pred=t_pred, m_pred=m_pred)
    return rate(t != m)


def transfer_metrics(t_pred: Any, m_pred: Any, y: Any) -> dict[str, Rate]:
    """All rates for one set of inputs, in one call.

    Keys: ``ac_mop``, ``ac_m``, ``dac``, ``dr``, ``iar``, ``agreement`` (T = M = y) and
    ``false_alarm_rate`` (T ≠ M; on adversarial inputs this is the detection rate).
    """
    t, m, yy = _same(t_pred=t_pred, m_pred=m_pred, y=y)
    return {
        "ac_mop": adversarial_accuracy(t, yy),
        "ac_m": adversarial_accuracy(m, yy),
        "dac": dac(t, m, yy),
        "dr": disagreement_rate(t, m, yy),
        "iar": inefficient_rate(t, m, yy),
        "agreement": agreement(t, m, yy),
        "false_alarm_rate": false_alarm_rate(t, m),
    }


def worst_case(defended_list: Sequence[Any]) -> torch.Tensor:
    """Per-example worst case over attacks: an example is defended only if it is defended
    against every attack. ``defended_list``: one boolean (N,) tensor per attack (e.g.
    :func:`correct` for AC_M or :func:`dac_ok` for DAC); returns their AND, bool (N,)."""
    masks = [torch.as_tensor(d).detach().cpu().reshape(-1).bool() for d in defended_list]
    if not masks:
        raise LuringError("worst_case needs the results of at least one attack")
    lengths = {len(m) for m in masks}
    if len(lengths) > 1:
        raise LuringError(
            f"worst_case needs the same examples for every attack, got lengths {sorted(lengths)}")
    out = masks[0].clone()
    for m in masks[1:]:
        out &= m
    return out
