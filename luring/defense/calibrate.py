"""Label-free calibration of the detector: the operating point (score rule, threshold) chosen
on held-out *unlabelled clean* images so that their false-alarm rate is at most a target.

The held-out images are a calibration split carved from the training images before P is
trained (:func:`calibration_split`: P never sees them, neither does checkpoint selection);
test images never enter. What a later recalibration needs (any rule, any target) is stored
in the defense directory as ``calibration.safetensors``: T's and M's logits on the
calibration images (float32 (n, K) each) and their indices in the training split (int64
(n,)). T and M are frozen, so the logits stand for the images.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from luring.defense.scores import PAPER_THRESHOLD, SCORES, flag, score
from luring.errors import LuringError
from luring.utils import atomic_write_bytes, make_generator

__all__ = ["DEFAULT_RULE", "DEFAULT_TARGET_FPR", "DEFAULT_CONFIDENCE", "CALIBRATION_FILE",
           "calibrate", "exceedances", "operating_point", "calibration_split", "fingerprint",
           "save_calibration", "load_calibration"]

DEFAULT_RULE = "js"  # highest held-out AUROC on mnist-5k (training-split images, MIM 0.2/0.3)
DEFAULT_TARGET_FPR = 0.05
#: Confidence of the stored operating point: its false-alarm rate on new clean images is at
#: most the target with this probability over the draw of the held-out images (see
#: :func:`exceedances`). The plain held-out quantile (confidence None) meets the target only
#: on average over draws, and measured above it on mnist-5k's test split (6.0% for 5%).
DEFAULT_CONFIDENCE = 0.9
CALIBRATION_FILE = "calibration.safetensors"
_KEYS = ("t_logits", "m_logits", "index")


def _target(target_fpr: float) -> float:
    t = float(target_fpr)
    if not 0.0 <= t < 1.0:  # also rejects NaN
        raise LuringError(f"the target false-alarm rate must be in [0, 1), got {target_fpr}")
    return t


def _binom_cdf(j: int, n: int, p: float) -> float:
    """P(Binomial(n, p) ≤ j), summed in log space (exact to float rounding)."""
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 1.0 if j >= n else 0.0
    lp, lq = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp
             + (n - i) * lq for i in range(0, min(j, n) + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def exceedances(n: int, target_fpr: float, confidence: float | None = None) -> int:
    """How many of ``n`` held-out clean scores may lie above the threshold (j, 0 ≤ j ≤ n).

    ``confidence`` None: the largest j with j / n ≤ ``target_fpr`` (the held-out rate meets
    the target; a new image's false-alarm probability is (j + 1) / (n + 1) on average over
    draws of the held-out images, slightly above the target). ``confidence`` c in (0, 1): the
    largest j such that the false-alarm rate on new images from the same distribution exceeds
    the target with probability ≤ 1 − c. With the threshold at the (n − j)-th smallest of n
    exchangeable continuous scores, that rate is Beta(j + 1, n − j)-distributed, so P(rate >
    α) = P(Binomial(n, α) ≤ j) (a distribution-free bound; Vovk 2012, Bates et al. 2021);
    j = 0 (no held-out image flagged) when even that is above 1 − c. Example: n = 400,
    α = 0.05: j = 20 without confidence, 14 at c = 0.9 (P(Bin(400, 0.05) ≤ 14) = 0.099,
    ≤ 15: 0.150)."""
    t = _target(target_fpr)
    if n < 0:
        raise LuringError(f"the number of held-out images must be ≥ 0, got {n}")
    if confidence is None:
        j = math.floor(t * n)
        while j + 1 <= n and (j + 1) / n <= t:  # the float product can round either way
            j += 1
        while j > 0 and j / n > t:
            j -= 1
        return j
    c = float(confidence)
    if not 0.0 < c < 1.0:  # also rejects NaN
        raise LuringError(f"the calibration confidence must be in (0, 1), got {confidence}")
    j = 0
    while j + 1 <= n and _binom_cdf(j + 1, n, t) <= 1.0 - c:
        j += 1
    return j


def calibrate(scores_clean: Any, target_fpr: float = DEFAULT_TARGET_FPR,
              confidence: float | None = None) -> float:
    """The smallest threshold that lets at most j = :func:`exceedances` (n, ``target_fpr``,
    ``confidence``) of ``scores_clean`` through.

    ``scores_clean``: (n,) scores of held-out clean images (n ≥ 1); ``target_fpr`` in [0, 1).
    With the rule "flag when score > threshold", the answer is the (n − j)-th smallest score,
    exactly (an order statistic, no interpolation): at most j scores exceed it, and any
    smaller threshold lets j + 1 through. Ties can leave the achieved rate below j / n.
    Target 0 gives the largest score (no held-out image flagged). Example: scores (0.1, 0.2,
    0.2, 0.9), target 0.25 → j = 1 → threshold 0.2 (only 0.9 is above it).
    """
    s = (scores_clean if isinstance(scores_clean, torch.Tensor)  # lists: no float32 detour
         else torch.as_tensor(scores_clean, dtype=torch.float64))
    s = s.detach().cpu().reshape(-1).double()
    n = len(s)
    j = exceedances(n, target_fpr, confidence)
    if n == 0:
        raise LuringError("calibration needs at least one held-out clean image")
    if not torch.isfinite(s).all():
        raise LuringError("calibration scores contain NaN or infinite values")
    return float(s.sort().values[n - j - 1])


def operating_point(t_logits: torch.Tensor, m_logits: torch.Tensor, rule: str = DEFAULT_RULE,
                    target_fpr: float | None = DEFAULT_TARGET_FPR,
                    confidence: float | None = None) -> dict[str, Any]:
    """The operating point of ``rule`` on held-out clean images given by T's and M's logits
    (float (n, K) each). ``target_fpr`` None is allowed for ``paper`` only: its fixed
    threshold 0 (flag when the labels differ), without calibration. ``confidence``: see
    :func:`exceedances` (None: the held-out rate meets the target). Returns ``{"rule",
    "threshold", "target_fpr", "confidence", "heldout_fpr", "heldout_k", "n"}`` (plain
    numbers; the achieved held-out rate is ``heldout_k / n`` ≤ target)."""
    if rule not in SCORES:
        raise LuringError(f"unknown detection score {rule!r}; choose one of {', '.join(SCORES)}")
    s = score(t_logits, m_logits, rule)
    if target_fpr is None:
        if rule != "paper":
            raise LuringError(f"the {rule} score needs a target false-alarm rate")
        threshold, confidence = PAPER_THRESHOLD, None
    else:
        threshold = calibrate(s, target_fpr, confidence)
    k = int(flag(s, threshold).sum())
    return {"rule": rule, "threshold": threshold,
            "target_fpr": None if target_fpr is None else float(target_fpr),
            "confidence": None if confidence is None else float(confidence),
            "heldout_fpr": k / len(s) if len(s) else None, "heldout_k": k, "n": len(s)}


def calibration_split(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``n`` training images into (P's training indices, calibration indices), both
    sorted int64: the calibration images are the last round(fraction · n) (at least 1) of a
    permutation drawn from ``make_generator(seed)``. ``fraction`` in (0, 0.5]; at least two
    images must stay for training."""
    if not 0.0 < float(fraction) <= 0.5:
        raise LuringError(f"the calibration fraction must be in (0, 0.5], got {fraction}")
    n_cal = max(1, int(round(float(fraction) * n)))
    if n - n_cal < 2:
        raise LuringError(f"{n} training images are too few to hold out {n_cal} for "
                          "calibration and train on the rest; give more images")
    perm = torch.randperm(n, generator=make_generator(seed))
    return perm[:n - n_cal].sort().values, perm[n - n_cal:].sort().values


def fingerprint(images: torch.Tensor) -> str:
    """SHA-256 (hex) of images' shape and float32 bytes: names a calibration set exactly."""
    x = images.detach().cpu().float().contiguous()
    h = hashlib.sha256(repr(tuple(x.shape)).encode())
    h.update(x.numpy().tobytes())
    return h.hexdigest()


def save_calibration(directory: str | os.PathLike, t_logits: torch.Tensor,
                     m_logits: torch.Tensor, index: torch.Tensor) -> Path:
    """Write ``calibration.safetensors`` (T's and M's logits, float32 (n, K); the images'
    indices, int64 (n,)) into ``directory``, atomically. Returns its path."""
    data = {"t_logits": t_logits.detach().cpu().float().contiguous(),
            "m_logits": m_logits.detach().cpu().float().contiguous(),
            "index": torch.as_tensor(index).detach().cpu().long().contiguous()}
    return atomic_write_bytes(Path(directory) / CALIBRATION_FILE, st_save(data))


def load_calibration(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read ``calibration.safetensors`` back: ``{"t_logits", "m_logits", "index"}``. Raises a
    one-line LuringError when it is missing or damaged."""
    p = Path(directory) / CALIBRATION_FILE
    if not p.is_file():
        raise LuringError(f"{p} is missing: this defense stores no calibration data; use "
                          "--rule paper or retrain it with `luring train-defense`")
    try:
        data = st_load(p.read_bytes())
    except (SafetensorError, OSError, ValueError) as exc:
        raise LuringError(f"{p} cannot be read ({exc}); retrain the defense") from None
    t, m, i = (data.get(k) for k in _KEYS)
    if (t is None or m is None or i is None or t.dim() != 2 or t.shape != m.shape
            or i.shape != (len(t),)):
        raise LuringError(f"{p} does not hold T's and M's logits (n, K) and n indices; "
                          "retrain the defense")
    return {"t_logits": t, "m_logits": m, "index": i}
