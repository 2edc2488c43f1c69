"""The detector at its operating point in the experiments (issue: operating points a defender
sets): detection rate and DAC at the stored threshold beside the paper rule's, and ROC curves.

Each defense stores an operating point (``Defense.detector``: a score rule and a threshold
calibrated on held-out *training* images to a false-alarm target; never on test images). For
adversarial examples x' crafted on T the units keep T's and M's logits on x'; from them:

* ``detection_rate``: the share of x' flagged (score > threshold);
* ``dac_op``: DAC at the operating point, the share of x' that M classifies correctly *or* the
  detector flags (the paper's DAC is the same with the paper rule, T(x') ≠ M(x'));
* ROC: negatives are the clean versions of the attacked test images, positives the x'; the
  curve of the stored rule's score, its AUROC, the operating point and the paper rule's point.
"""

from __future__ import annotations

from typing import Any

import torch

from luring.defense.scores import score
from luring.metrics import auroc, rate, roc_curve

__all__ = ["op_rates", "clean_scores", "roc_entry", "pooled_roc"]


def clean_scores(defense: Any, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The stored rule's and the paper rule's scores (float64 (N,)) of the clean images x."""
    t, m = defense.logits(x)
    return {"score": score(t, m, defense.detector["rule"]), "paper": score(t, m, "paper")}


def op_rates(defense: Any, t_logits: torch.Tensor, m_logits: torch.Tensor,
             m_ok: torch.Tensor) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Rates at the defense's stored operating point for adversarial examples with logits
    ``t_logits``, ``m_logits`` (N, K) and M-correct booleans ``m_ok`` (N,). Returns
    ``({"detection_rate": Rate, "dac_op": Rate}, {"score", "paper"})`` (the per-example scores,
    for ROC curves)."""
    op = defense.detector
    s = score(t_logits, m_logits, op["rule"])
    flagged = s > float(op["threshold"])
    m_ok = m_ok.bool().cpu()
    return ({"detection_rate": rate(flagged), "dac_op": rate(m_ok | flagged)},
            {"score": s, "paper": score(t_logits, m_logits, "paper")})


def roc_entry(clean: dict[str, torch.Tensor], adv: dict[str, torch.Tensor],
              threshold: float, rule: str) -> dict[str, Any]:
    """ROC of the stored rule's score (clean vs adversarial, each (N,)), its AUROC, the
    operating point (FPR, TPR at ``threshold``) and the paper rule's single point."""
    fpr, tpr, _ = roc_curve(clean["score"], adv["score"])
    return {"rule": rule, "fpr": fpr.tolist(), "tpr": tpr.tolist(),
            "auroc": auroc(clean["score"], adv["score"]),
            "operating_point": [float((clean["score"] > threshold).double().mean()),
                                float((adv["score"] > threshold).double().mean())],
            "paper_point": [float((clean["paper"] > 0).double().mean()),
                            float((adv["paper"] > 0).double().mean())],
            "n_clean": len(clean["score"]), "n_adv": len(adv["score"])}


def pooled_roc(per_seed: list[tuple[dict, dict, float, str]]) -> dict[str, Any]:
    """:func:`roc_entry` over every seed's examples pooled (each seed's own threshold for its
    operating point is averaged; the curve and AUROC use the pooled scores)."""
    clean = {k: torch.cat([c[k] for c, _, _, _ in per_seed]) for k in ("score", "paper")}
    adv = {k: torch.cat([a[k] for _, a, _, _ in per_seed]) for k in ("score", "paper")}
    entry = roc_entry(clean, adv, per_seed[0][2], per_seed[0][3])
    if len(per_seed) > 1:
        pts = [roc_entry(c, a, t, r)["operating_point"] for c, a, t, r in per_seed]
        entry["operating_point"] = [sum(p[0] for p in pts) / len(pts),
                                    sum(p[1] for p in pts) / len(pts)]
    return entry
