"""The logits analysis Ω_c (eq. 5, table 10): how much each approach's T changes the
gradients of M's logits, and how often luring's Ω_c is the highest.

On test images correctly classified by M and every T (the first seed's models). Units:
``logits/<approach>``; each unit's identity (images, models, seed, classes) is stored with it.
"""

from __future__ import annotations

from typing import Any

import torch

from luring.experiments.context import Result, RunContext
from luring.metrics import logit_gradients, omega, omega_comparison
from luring.models import predict_logits
from luring.utils import progress

__all__ = ["SUMMARY", "run", "departures", "run_logits", "LOGIT_CLASSES", "logit_classes",
           "logits_lines"]

#: The experiment in one line (the CLI's help).
SUMMARY = "logits analysis Ω_c (table 10)"


#: The logits analysis looks at every class of a model with at most this many (the paper's
#: data sets have 10); beyond it (ImageNet's 1,000) at the LOGIT_CLASSES classes M scores
#: highest on the images, since every class costs one backward pass per model and holds an
#: input-sized gradient per image.
LOGIT_CLASSES = 10


def logit_classes(target: torch.nn.Module, x: torch.Tensor) -> list[int] | None:
    """The classes of the logits analysis for M = ``target`` on images ``x`` (N, C, H, W):
    None (all of them) when M has at most :data:`LOGIT_CLASSES` logits, else the
    :data:`LOGIT_CLASSES` classes with the highest mean logit of M over (the first 1,000 of)
    ``x`` (label-free; ties: lowest index first), in increasing class order."""
    if len(x) == 0 or predict_logits(target, x[:1]).shape[1] <= LOGIT_CLASSES:
        return None
    mean = predict_logits(target, x[:1000], batch_size=100).double().mean(0)
    order = sorted(range(len(mean)), key=lambda c: (-float(mean[c]), c))
    return sorted(order[:LOGIT_CLASSES])


def logits_lines(logits: dict[str, Any]) -> list[str]:
    """The departure of a logits analysis result (:func:`run_logits`) from the paper: one line
    when it looked at a subset of M's classes, else none."""
    classes = logits.get("classes")
    if not classes:
        return []
    return [f"logits analysis (eq. 5, table 10) on the {len(classes)} classes M scores highest "
            f"on its images (classes {', '.join(map(str, classes))}), not on all of M's "
            "classes: each class costs a backward pass per model (paper: 10-class data sets, "
            "every class)"]


def run_logits(run: Any, target: torch.nn.Module, defenses: dict[str, Any],
               x: torch.Tensor, settings: dict[str, Any],
               ident: dict[str, Any] | None = None) -> dict[str, Any]:
    """Ω_c per approach and class, and table 10: for each class, the share of examples where
    Ω_c is higher for luring than for the other approaches."""
    grad_m = None
    classes = logit_classes(target, x)
    omegas: dict[str, torch.Tensor] = {}
    for name, d in progress(list(defenses.items()), desc="logits", unit="model"):
        def compute(d=d):
            nonlocal grad_m
            if grad_m is None:
                grad_m = logit_gradients(target, x, classes)
            return {"omega": omega(grad_m, logit_gradients(d.augmented, x, classes))}, {}

        key = {"run": ident} if classes is None else {"run": ident, "classes": classes}
        omegas[name] = run.unit("logits", name, compute, key)[0]["omega"]
    mean = {a: o.double().mean(0).tolist() for a, o in omegas.items()}
    out: dict[str, Any] = {"n": len(x), "mean_omega": mean}
    if classes is not None:
        out["classes"] = classes
    if "luring" in omegas and len(omegas) > 1:
        rates = omega_comparison(omegas, ref="luring")
        if classes is not None:  # column j is class classes[j]
            rates = {v: {str(classes[int(j)]): r for j, r in per.items()}
                     for v, per in rates.items()}
        out["rates"] = rates
    return out




def run(ctx: RunContext) -> Result:
    """Section ``logits`` (:func:`run_logits` on the first seed's defenses) and, when it
    looked at a subset of M's classes, its departure line."""
    first = ctx.first()
    if not first and not ctx.final:
        return Result()
    x, _, ident = ctx.images(ctx.settings["logits"]["n"], "logits")
    out = run_logits(ctx.run, ctx.target, first, x, ctx.settings, ident)
    return Result(sections={"logits": out}, departures=logits_lines(out))


def departures(settings: dict[str, Any]) -> list[str]:
    """None before it runs (the class subset, if any, is known once it has)."""
    return []
