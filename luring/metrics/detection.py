"""Detector curves: ROC curve, AUROC and the detection rate at an operating point.

A detection score is higher for more suspicious inputs and an input is flagged when its score
is **strictly greater** than the threshold (the rule of ``luring.defense.scores``).
``scores_clean`` are the scores of clean inputs (flagging one is a false alarm),
``scores_adv`` those of adversarial inputs (flagging one is a detection). Scores are 1-D
(anything :func:`torch.as_tensor` accepts), finite; they are compared in float64.
"""

from __future__ import annotations

from typing import Any

import torch

from luring.errors import LuringError
from luring.metrics.rates import Rate

__all__ = ["roc_curve", "auroc", "detection_rate"]


def _scores(name: str, v: Any) -> torch.Tensor:
    """``v`` as a 1-D float64 CPU tensor of finite values, or a one-line LuringError."""
    t = v if isinstance(v, torch.Tensor) else torch.as_tensor(v, dtype=torch.float64)
    t = t.detach().cpu()
    if t.dim() == 0:
        t = t.reshape(1)
    if t.dim() != 1:
        raise LuringError(f"{name} must be a 1-D tensor of scores, got shape {tuple(t.shape)}")
    t = t.double()
    if not torch.isfinite(t).all():
        raise LuringError(f"{name} contain NaN or infinite values")
    return t


def _both(scores_clean: Any, scores_adv: Any) -> tuple[torch.Tensor, torch.Tensor]:
    c, a = _scores("clean scores", scores_clean), _scores("adversarial scores", scores_adv)
    if not len(c) or not len(a):
        raise LuringError(f"a ROC curve needs clean and adversarial scores, got {len(c)} clean "
                          f"and {len(a)} adversarial")
    return c, a


def _above(sorted_scores: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """How many of ``sorted_scores`` (ascending) are > each threshold (int64)."""
    return len(sorted_scores) - torch.searchsorted(sorted_scores, thresholds, right=True)


def roc_curve(scores_clean: Any, scores_adv: Any
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The exact empirical ROC curve of the rule "flag when score > threshold".

    Returns ``(fpr, tpr, thresholds)``, float64 tensors of one length L: ``thresholds`` are
    the distinct scores in decreasing order followed by −inf; ``fpr[i]`` / ``tpr[i]`` are the
    shares of clean / adversarial scores above ``thresholds[i]``. The curve starts at (0, 0)
    (threshold = the largest score) and ends at (1, 1) (−inf); both coordinates are
    non-decreasing. Example: clean (0.1, 0.4), adversarial (0.4, 0.9) → thresholds (0.9, 0.4,
    0.1, −inf), fpr (0, 0, ½, 1), tpr (0, ½, 1, 1).
    """
    c, a = _both(scores_clean, scores_adv)
    values = torch.unique(torch.cat([c, a]))  # ascending
    thresholds = torch.cat([values.flip(0), torch.tensor([float("-inf")], dtype=torch.float64)])
    fpr = _above(c.sort().values, thresholds).double() / len(c)
    tpr = _above(a.sort().values, thresholds).double() / len(a)
    return fpr, tpr, thresholds


def auroc(scores_clean: Any, scores_adv: Any) -> float:
    """Area under the ROC curve: P(adversarial score > clean score) + ½ P(equal), over all
    clean × adversarial pairs (ties count half; equals the Mann–Whitney U statistic of the
    adversarial scores divided by n_clean · n_adv, and the trapezoidal area under
    :func:`roc_curve`). Computed exactly from integer counts. In [0, 1]; 0.5 = chance."""
    c, a = _both(scores_clean, scores_adv)
    values, inverse = torch.unique(torch.cat([c, a]), return_inverse=True)
    n_c = torch.bincount(inverse[:len(c)], minlength=len(values))
    n_a = torch.bincount(inverse[len(c):], minlength=len(values))
    below = torch.cumsum(n_c, 0) - n_c  # clean scores strictly below each value
    twice_u = int((n_a * (2 * below + n_c)).sum())
    return twice_u / (2 * len(c) * len(a))


def detection_rate(scores: Any, threshold: float) -> Rate:
    """The share of ``scores`` (N,) flagged at ``threshold`` (score > threshold), as a
    :class:`~luring.metrics.Rate` with its Wilson interval: on adversarial inputs the
    detection rate (true-positive rate), on clean inputs the false-alarm rate."""
    s = _scores("scores", scores)
    return Rate.of(int((s > float(threshold)).sum()), len(s))
