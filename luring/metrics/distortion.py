"""Adversarial distortion x' − x: per-example l2, l∞ and l0 (table 9, figure 3 left).

Images are float NCHW in [0, 1]; distances are in those units (l2 and l∞ over all C·H·W
values). l0 counts *pixels* (spatial positions (h, w)) changed in any channel by more than
half a grey level: ``|δ| > 0.5/255``. A change of exactly half a grey level is not counted;
the comparison is made in float64 with a margin of 1e-4 grey level so that float32 rounding
of ``x + 0.5/255`` cannot push an exact half-level change over the threshold.
"""

from __future__ import annotations

from typing import Any

import torch

from luring.errors import LuringError

__all__ = [
    "L0_THRESHOLD",
    "l2_distortion",
    "linf_distortion",
    "l0_distortion",
    "distortions",
    "distortion_summary",
]

#: Half a grey level in [0, 1] units: smaller changes are not counted by l0.
L0_THRESHOLD = 0.5 / 255
_L0_MARGIN = 1e-4 / 255


def _delta(x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """x_adv − x in float64, after checking both are NCHW tensors of the same shape."""
    if not isinstance(x_adv, torch.Tensor) or not isinstance(x, torch.Tensor):
        raise LuringError("distortion needs two tensors (adversarial and clean images)")
    if x_adv.shape != x.shape:
        raise LuringError(
            f"adversarial and clean images differ in shape: {tuple(x_adv.shape)} vs "
            f"{tuple(x.shape)}; pass the same examples in the same order")
    if x.dim() != 4:
        raise LuringError(f"images must be 4-D NCHW, got shape {tuple(x.shape)}")
    return x_adv.detach().cpu().double() - x.detach().cpu().double()


def _l2(d: torch.Tensor) -> torch.Tensor:
    return d.flatten(1).norm(p=2, dim=1)


def _linf(d: torch.Tensor) -> torch.Tensor:
    d = d.flatten(1).abs()
    if d.shape[1] == 0:
        return torch.zeros(d.shape[0], dtype=torch.float64)
    return d.amax(dim=1)


def _l0(d: torch.Tensor) -> torch.Tensor:
    return (d.abs() > (L0_THRESHOLD + _L0_MARGIN)).any(dim=1).flatten(1).sum(dim=1)


def l2_distortion(x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-example ``||x' − x||_2`` over all C·H·W values; float64 (N,)."""
    return _l2(_delta(x_adv, x))


def linf_distortion(x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-example ``||x' − x||_∞``; float64 (N,) (0 for an empty image)."""
    return _linf(_delta(x_adv, x))


def l0_distortion(x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-example number of pixels (h, w) where some channel changed by more than half a
    grey level (``|δ| > 0.5/255``; a pixel changed in several channels counts once); int64
    (N,) in [0, H·W]."""
    return _l0(_delta(x_adv, x))


def distortions(x_adv: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{"l2", "linf", "l0"}`` per-example tensors of shape (N,) (one difference computed)."""
    d = _delta(x_adv, x)
    return {"l2": _l2(d), "linf": _linf(d), "l0": _l0(d)}


def _mean(t: torch.Tensor) -> float | None:
    return float(t.double().mean()) if t.numel() else None


def distortion_summary(x_adv: torch.Tensor, x: torch.Tensor,
                       success: Any = None) -> dict[str, Any]:
    """Table-9 summary of one attack run.

    ``success``: optional boolean (N,) — which x' fool the attacked model; the means and the
    ``l0`` list are taken over the successful examples only (the paper averages CWL2
    adversarial examples). Returns plain Python values: ``{"n" (all examples),
    "n_success", "success_rate" (None when n = 0), "mean_l2", "mean_linf", "mean_l0"
    (None when no success), "l0" (list of ints, per successful example)}``.
    """
    d = distortions(x_adv, x)
    n = int(x.shape[0])
    if success is None:
        keep = torch.ones(n, dtype=torch.bool)
    else:
        keep = torch.as_tensor(success).detach().cpu().reshape(-1).bool()
        if keep.numel() != n:
            raise LuringError(f"success mask has {keep.numel()} entries for {n} examples")
    l2, linf, l0 = d["l2"][keep], d["linf"][keep], d["l0"][keep]
    k = int(keep.sum())
    return {
        "n": n,
        "n_success": k,
        "success_rate": (k / n) if n else None,
        "mean_l2": _mean(l2),
        "mean_linf": _mean(linf),
        "mean_l0": _mean(l0),
        "l0": [int(v) for v in l0.tolist()],
    }
