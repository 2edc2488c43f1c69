"""The paper's complementary analyses: CW-L2 distortion (table 9, figure 3 left), the logits
analysis Ω_c (eq. 5, table 10) and the saliency maps ∇ₓP(x) (figure 3 right).

Each runs on test images correctly classified by M and every T (the first seed's models).
Units: ``distortion/<model>``, ``logits/<approach>``, ``saliency/all``; each unit's identity
(images, models, seed, parameters; see ``reproduce``) is stored with it, so a unit made for
other images or models is recomputed, never reused.
"""

from __future__ import annotations

from typing import Any

import torch

from luring.experiments.common import make_attack, unit_seed
from luring.experiments.store import RunDir
from luring.metrics import (
    component_saliency,
    distortion_summary,
    input_saliency,
    logit_gradients,
    omega,
    omega_comparison,
)
from luring.models import predict_labels
from luring.utils import progress

__all__ = ["run_distortion", "run_logits", "run_saliency", "LOGIT_CLASSES", "logit_classes",
           "logits_lines"]

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
    from luring.models import predict_logits

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


def run_distortion(run: RunDir, target: torch.nn.Module, defenses: dict[str, Any],
                   x: torch.Tensor, y: torch.Tensor, settings: dict[str, Any],
                   seed: int, ident: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """CW-L2 on M and on each T: table-9 rows ``{"model", "n", "n_success", "success_rate",
    "mean_l2", "mean_linf", "mean_l0", "l0"}`` (means over successful examples)."""
    cfg = settings["distortion"]
    models = {"target": target} | {a: d.augmented for a, d in defenses.items()}
    rows = []
    for name, model in progress(list(models.items()), desc="distortion", unit="model"):
        def craft(model=model, name=name):
            attack = make_attack("cw-l2", model, 1.0, cfg, unit_seed(seed, "cw", name))
            x_adv = attack(x, y)
            return {"x_adv": x_adv, "success": predict_labels(model, x_adv) != y}, \
                {"params": attack.params()}

        data, _ = run.unit("distortion", name, craft, {"run": ident, "params": cfg})
        rows.append({"model": name} | distortion_summary(data["x_adv"], x, data["success"]))
    return rows


def run_logits(run: RunDir, target: torch.nn.Module, defenses: dict[str, Any],
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


def run_saliency(run: RunDir, target: torch.nn.Module, defenses: dict[str, Any],
                 x: torch.Tensor, y: torch.Tensor,
                 ident: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """Figure 3 (right): the clean images, ∇ₓCE(M(x), y) and ∇ₓP(x) for each approach."""
    def compute():
        maps = {"image": x, "input_gradient": input_saliency(target, x, y)}
        for name, d in defenses.items():
            maps[f"component_{name}"] = component_saliency(d.component, x)
        return maps, {}

    return run.unit("saliency", "all", compute, {"run": ident})[0]
