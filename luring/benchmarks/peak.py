"""The machine's real limit: peak matrix-multiply rate per precision, and the FLOPs of the
benchmark's work counted from the models, so that a throughput can be read as a fraction
of what the hardware does at best.

* :func:`matmul_peak` times a large square matrix multiply (CPU 2,048², GPU 8,192²) in
  float32 and under autocast in each lower precision the device runs, and returns GFLOP/s
  (2·n³ FLOPs per product; the best of a few runs after a warm-up).
* :func:`work_flops` counts, with ``torch.utils.flop_counter.FlopCounterMode``, the FLOPs of
  one image's forward + backward to the input of a model (an attack's gradient evaluation)
  and of one image's training step (forward + backward to the weights).
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from luring import precision as prec

__all__ = ["matmul_peak", "work_flops", "fractions"]


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def matmul_peak(device: torch.device, size: int | None = None, reps: int = 5
                ) -> dict[str, float]:
    """GFLOP/s of an n×n matrix product per precision (``fp32`` and the lower precisions
    :func:`luring.precision.resolve` accepts on ``device``): the best of ``reps`` runs."""
    n = size or (8192 if device.type == "cuda" else 2048)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device)
    b = torch.randn(n, n, generator=g).to(device)
    out: dict[str, float] = {}
    for p in ("fp32", "bf16", "fp16"):
        try:
            prec.resolve(p, None, device)
        except Exception:  # noqa: BLE001 - a precision this device does not run
            continue
        best = float("inf")
        for i in range(reps + 1):
            _sync(device)
            t0 = time.perf_counter()
            with prec.autocast(p, device):
                torch.mm(a, b)
            _sync(device)
            if i:
                best = min(best, time.perf_counter() - t0)
        out[p] = 2.0 * n ** 3 / best / 1e9
    return out


def _count(fn: Any) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


def work_flops(target: nn.Module, component: nn.Module, shape: tuple[int, ...]
               ) -> dict[str, float]:
    """FLOPs per image: ``fwd_bwd_input_m`` (an attack's gradient evaluation on M),
    ``fwd_bwd_input_t`` (on T = M∘P), ``train_step_t`` (P trained through frozen M) and
    ``train_step_m`` (M trained), counted on a batch of 8 and divided by 8 (CPU, float32)."""
    x = torch.rand((8, *shape))
    y = torch.zeros(8, dtype=torch.long)
    m = _copy(target)
    c = _copy(component)

    def grad_input(model: nn.Module) -> None:
        for p in model.parameters():
            p.requires_grad_(False)
        xi = x.clone().requires_grad_(True)
        F.cross_entropy(model(xi), y, reduction="sum").backward()  # to the input only

    def train_t() -> None:
        for p in m.parameters():
            p.requires_grad_(False)
        for p in c.parameters():
            p.requires_grad_(True)
        F.cross_entropy(m(c(x)), y).backward()

    def train_m() -> None:
        for p in m.parameters():
            p.requires_grad_(True)
        F.cross_entropy(m(x), y).backward()

    return {"fwd_bwd_input_m": _count(lambda: grad_input(m)) / 8,
            "fwd_bwd_input_t": _count(lambda: grad_input(nn.Sequential(c, m))) / 8,
            "train_step_t": _count(train_t) / 8, "train_step_m": _count(train_m) / 8}


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).cpu().float().eval()


#: contender → (FLOPs key of :func:`work_flops`, which precision's peak it is held to:
#: ``"fp32"``, or ``"run"`` for the run's resolved precision)
_WORK = {
    "bare_loop": ("fwd_bwd_input_m", "fp32"), "bare_loop_best": ("fwd_bwd_input_m", "best"),
    "torchattacks_mifgsm": ("fwd_bwd_input_m", "fp32"), "art_mim": ("fwd_bwd_input_m", "fp32"),
    "pgd": ("fwd_bwd_input_m", "run"), "mim": ("fwd_bwd_input_m", "run"),
    "dimti": ("fwd_bwd_input_m", "run"), "nifgsm": ("fwd_bwd_input_m", "run"),
    "sinifgsm": ("fwd_bwd_input_m", "run"), "vmifgsm": ("fwd_bwd_input_m", "run"),
    "vnifgsm": ("fwd_bwd_input_m", "run"), "sia": ("fwd_bwd_input_m", "run"),
    "bsr": ("fwd_bwd_input_m", "run"),
    "bare_step_p": ("train_step_t", "fp32"), "bare_step_p_best": ("train_step_t", "best"),
    "train_p": ("train_step_t", "run"),
    "bare_step_m": ("train_step_m", "fp32"), "bare_step_m_best": ("train_step_m", "best"),
    "train_m": ("train_step_m", "run"),
}


def fractions(medians: dict[str, float], flops: dict[str, float], peak: dict[str, float],
              run_precision: str, best_precision: str) -> dict[str, dict[str, float]]:
    """Per contender with a known FLOP count: its achieved GFLOP/s (median throughput ×
    FLOPs per unit) and that as a fraction of the peak of the precision it computes in."""
    out: dict[str, dict[str, float]] = {}
    for name, value in medians.items():
        if name not in _WORK or value is None:
            continue
        key, which = _WORK[name]
        p = {"run": run_precision, "best": best_precision}.get(which, which)
        if p not in peak or key not in flops:
            continue
        gflops = value * flops[key] / 1e9
        out[name] = {"gflops": gflops, "precision": p, "peak_gflops": peak[p],
                     "fraction_of_peak": gflops / peak[p]}
    return out
