"""Clean evaluation of a defense (the paper's table 8) and the Markdown summary.

On labelled clean images: the test accuracy of M and of T = M∘P, the agreement rate (T and M
both predict the true label, table 8's "AGREE"), the paper rule's false-alarm rate (T ≠ M on
clean images: the detection scheme of section 4.1 flags them) and, beside it, the false-alarm
rate of the calibrated detector at its operating point (score above the threshold chosen on
held-out training images, ``luring.defense.calibrate``). Each rate comes with its Wilson 95%
interval. Labels are read here only, never during training, selection or calibration; the
test images never choose a threshold.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from luring.defense.scores import SCORES, flag, score
from luring.errors import LuringError
from luring.utils import check_images, wilson_interval

__all__ = ["evaluate_clean", "wilson_interval", "clean_table_markdown"]


def _models(defense_or_models: Any) -> tuple[nn.Module, nn.Module]:
    if isinstance(defense_or_models, (tuple, list)) and len(defense_or_models) == 2:
        return defense_or_models[0], defense_or_models[1]
    if hasattr(defense_or_models, "target") and hasattr(defense_or_models, "augmented"):
        return defense_or_models.target, defense_or_models.augmented
    raise LuringError("evaluate_clean needs a Defense, a TrainedDefense or a (target M, "
                      "augmented T) pair of models")


def _detector(defense_or_models: Any, detector: dict[str, Any] | None) -> dict[str, Any] | None:
    if detector is None:
        detector = getattr(defense_or_models, "detector", None)
    if detector is None:
        return None
    if not isinstance(detector, dict) or detector.get("rule") not in SCORES or not isinstance(
            detector.get("threshold"), (int, float)):
        raise LuringError("the detector must be a dict with a 'rule' (one of "
                          f"{', '.join(SCORES)}) and a numeric 'threshold'")
    return detector


@torch.no_grad()
def evaluate_clean(defense_or_models: Any, x: torch.Tensor, y: torch.Tensor, *,
                   batch_size: int = 1000, detector: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
    """Clean figures of a defense on labelled images.

    ``defense_or_models``: a :class:`~luring.defense.Defense`, a
    :class:`~luring.defense.TrainedDefense` or a pair ``(M, T)`` of modules returning (N, K)
    logits (both are switched to eval mode). ``x``: float32 (N, C, H, W) in [0, 1]; ``y``:
    int64 (N,). ``detector``: an operating point ``{"rule", "threshold", ...}`` (default: a
    Defense's stored one; none for the other inputs). Returns ``{"n", "accuracy_m",
    "accuracy_t", "agreement", "false_alarm_rate", "intervals": {name: [low, high]}}`` (rates
    in [0, 1]; agreement = T and M both right; false alarm = T ≠ M, the paper rule) and, with
    a detector, ``"detector_false_alarm_rate"`` (its interval under ``intervals``) and
    ``"detector": {"rule", "threshold", "target_fpr", "heldout_fpr"}``.
    """
    target, augmented = _models(defense_or_models)
    det = _detector(defense_or_models, detector)
    check_images(x, name="evaluation images")
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or len(y) != len(x):
        raise LuringError(f"evaluation labels must be a 1-D tensor of {len(x)} labels")
    target.eval()
    augmented.eval()
    dev = next(target.parameters()).device
    counts = {"accuracy_m": 0, "accuracy_t": 0, "agreement": 0, "false_alarm_rate": 0}
    if det is not None:
        counts["detector_false_alarm_rate"] = 0
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(dev)
        yb = y[i:i + batch_size].to(dev)
        m_logits = target(xb).float()
        t_logits = augmented(xb).float()
        m, t = m_logits.argmax(1), t_logits.argmax(1)
        counts["accuracy_m"] += int((m == yb).sum())
        counts["accuracy_t"] += int((t == yb).sum())
        counts["agreement"] += int(((m == yb) & (t == yb)).sum())
        counts["false_alarm_rate"] += int((t != m).sum())
        if det is not None:
            s = score(t_logits, m_logits, det["rule"])
            counts["detector_false_alarm_rate"] += int(flag(s, det["threshold"]).sum())
    n = len(x)
    out: dict[str, Any] = {"n": n}
    out.update({k: (v / n if n else 0.0) for k, v in counts.items()})
    out["intervals"] = {k: wilson_interval(v, n) for k, v in counts.items()}
    if det is not None:
        out["detector"] = {k: det.get(k) for k in ("rule", "threshold", "target_fpr",
                                                   "confidence", "heldout_fpr")}
    return out


def clean_table_markdown(clean: dict[str, Any]) -> str:
    """A Markdown table of :func:`evaluate_clean`'s figures (percentages, Wilson 95%)."""
    names = [("accuracy_m", "test accuracy of M (target)"),
             ("accuracy_t", "test accuracy of T = M∘P (augmented)"),
             ("agreement", "agreement (T and M both right)"),
             ("false_alarm_rate", "detector false alarms, paper rule (T ≠ M)")]
    det = clean.get("detector")
    if det and "detector_false_alarm_rate" in clean:
        target = (f", held-out target ≤ {100 * det['target_fpr']:g}%"
                  if det.get("target_fpr") is not None else "")
        if det.get("confidence") is not None:
            target += f" at confidence {det['confidence']:g}"
        names.append(("detector_false_alarm_rate", f"detector false alarms at the operating "
                      f"point ({det['rule']} > {det['threshold']:.4g}{target})"))
    lines = [f"Clean images: n = {clean['n']}.", "",
             "| figure | value | Wilson 95% |", "|---|---|---|"]
    for key, label in names:
        lo, hi = clean.get("intervals", {}).get(key, [float("nan")] * 2)
        lines.append(f"| {label} | {100 * clean[key]:.1f}% | [{100 * lo:.1f}, {100 * hi:.1f}] |")
    return "\n".join(lines) + "\n"
