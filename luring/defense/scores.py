"""Detection scores of the deployed defense: how suspicious an input is, from the two logit
vectors the defender holds for it (T = M∘P's and M's).

Every score maps ``t_logits``, ``m_logits`` (N, K) to (N,) float64 values in [0, 1], higher =
more suspicious; an input is flagged when its score is **strictly greater** than the
operating point's threshold (:func:`flag`). With p = softmax(T's logits), q = softmax(M's
logits) and t = argmax p (T's label, what the defense answers):

* ``paper``: 1 when T's and M's labels differ, else 0 (section 4.1's rule; with threshold 0
  it flags exactly when T(x) ≠ M(x));
* ``tv``: the total-variation distance ½ Σ_k |p_k − q_k|;
* ``js``: the Jensen–Shannon distance √JSD(p, q), the divergence taken in bits (log base 2)
  so that it lies in [0, 1]; JSD = ½ KL(p‖m) + ½ KL(q‖m) with m = (p + q) / 2;
* ``pm``: 1 − q_t, one minus M's probability of T's label.

Labels are the first maximal logit (``argmax``, as :func:`luring.models.predict_labels`).
Probabilities are computed in float64 from the given logits.
"""

from __future__ import annotations

import math

import torch

from luring.errors import LuringError

__all__ = ["SCORES", "PAPER_THRESHOLD", "SCORE_DESCRIPTIONS", "score", "flag"]

SCORES = ("paper", "tv", "js", "pm")
PAPER_THRESHOLD = 0.0  # ``paper`` scores are 0 or 1: flag when > 0, i.e. the labels differ
SCORE_DESCRIPTIONS = {
    "paper": "1 if T's and M's labels differ (section 4.1)",
    "tv": "total-variation distance between T's and M's softmax vectors",
    "js": "Jensen-Shannon distance (base 2) between T's and M's softmax vectors",
    "pm": "1 - M's probability of T's label",
}


def _check(t_logits: torch.Tensor, m_logits: torch.Tensor) -> None:
    for name, z in (("T's logits", t_logits), ("M's logits", m_logits)):
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or not z.is_floating_point():
            raise LuringError(f"{name} must be a float tensor of shape (N, K)")
    if t_logits.shape != m_logits.shape:
        raise LuringError(f"T's and M's logits differ in shape: {tuple(t_logits.shape)} vs "
                          f"{tuple(m_logits.shape)}")
    if t_logits.shape[1] < 1:
        raise LuringError("logits need at least one class")
    if not (torch.isfinite(t_logits).all() and torch.isfinite(m_logits).all()):
        raise LuringError("logits contain NaN or infinite values; check the models")


def _js_distance(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    p, q = log_p.exp(), log_q.exp()
    log_mix = torch.logaddexp(log_p, log_q) - math.log(2.0)
    # x·(log x − log m), with 0·log 0 = 0 (exp(log_p) underflows to 0 exactly there)
    kl_p = torch.where(p > 0, p * (log_p - log_mix), torch.zeros_like(p)).sum(1)
    kl_q = torch.where(q > 0, q * (log_q - log_mix), torch.zeros_like(q)).sum(1)
    jsd = (0.5 * (kl_p + kl_q) / math.log(2.0)).clamp(0.0, 1.0)  # rounding can leave ±1e-17
    return jsd.sqrt()


def score(t_logits: torch.Tensor, m_logits: torch.Tensor, rule: str = "paper") -> torch.Tensor:
    """The detection score ``rule`` (one of :data:`SCORES`) of each input.

    ``t_logits``, ``m_logits``: float (N, K) logits of T = M∘P and of M on the same N inputs
    (any device). Returns float64 (N,) on the CPU, in [0, 1], higher = more suspicious.
    Example: K = 2, T's logits (0, 0) (p = (½, ½)), M's logits (ln 3, 0) (q = (¾, ¼)): T's
    label is 0 = M's, so ``paper`` = 0, ``tv`` = ¼, ``pm`` = 1 − ¾ = ¼.
    """
    if rule not in SCORES:
        raise LuringError(f"unknown detection score {rule!r}; choose one of "
                          f"{', '.join(SCORES)}")
    _check(t_logits, m_logits)
    t64 = t_logits.detach().cpu().double()
    m64 = m_logits.detach().cpu().double()
    t_label = t64.argmax(1)
    if rule == "paper":
        return (t_label != m64.argmax(1)).double()
    log_q = torch.log_softmax(m64, 1)
    if rule == "pm":
        return (1.0 - log_q.gather(1, t_label[:, None])[:, 0].exp()).clamp(0.0, 1.0)
    log_p = torch.log_softmax(t64, 1)
    if rule == "tv":
        return (0.5 * (log_p.exp() - log_q.exp()).abs().sum(1)).clamp(0.0, 1.0)
    return _js_distance(log_p, log_q)


def flag(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """The operating point's decision: bool (N,), True where ``scores`` (N,) > ``threshold``
    (ties are not flagged)."""
    return torch.as_tensor(scores).reshape(-1) > float(threshold)
