"""Section 3: characterisation of the luring effect (DR and IAR, eq. 3, figure 2).

Each approach's T is attacked with FGSM, PGD, MIM and MIM-L2 at the data set's three ε on the
same test images (correctly classified by M and every T). Only the adversarial examples that
succeed on every T are transferred to M; DR and IAR are computed on them per approach.
One unit = (seed, approach, attack, ε): the labels T and M give to the examples crafted on T.
"""

from __future__ import annotations

from typing import Any

import torch

from luring.experiments.common import aggregate, make_attack, unit_seed
from luring.experiments.store import RunDir
from luring.metrics import disagreement_rate, inefficient_rate
from luring.models import predict_labels
from luring.utils import progress

__all__ = ["run_characterize", "CHARACTERIZE_ATTACKS"]

CHARACTERIZE_ATTACKS = ("fgsm", "pgd", "mim", "mim-l2")


def run_characterize(run: RunDir, target: torch.nn.Module, defenses: dict[str, list[Any]],
                     x: torch.Tensor, y: torch.Tensor, settings: dict[str, Any],
                     seed: int, ident: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Run (or reuse) every characterisation unit; return result rows
    ``{"experiment": "characterize", "approach", "attack", "eps", "n", "dr", "iar", ...}``
    with the per-seed values aggregated (see :func:`~luring.experiments.common.aggregate`).
    ``ident`` identifies the images and models (see ``reproduce``); each unit's identity adds
    its attack parameters."""
    cfg = settings["characterize"]
    seeds = sorted(next(iter(defenses.values())).keys()) if defenses else []
    units = [(s, a, atk, e) for s in seeds for a in defenses for atk in CHARACTERIZE_ATTACKS
             for e in settings["eps"]]
    preds: dict[tuple, dict[str, torch.Tensor]] = {}
    bar = progress(units, desc="characterize", unit="unit")
    for s, a, atk, e in bar:
        model = defenses[a][s].augmented

        def craft(model=model, atk=atk, e=e, a=a, s=s):
            attack = make_attack(atk, model, e, cfg, unit_seed(seed, s, a, atk, e))
            x_adv = attack(x, y)
            return ({"t_pred": predict_labels(model, x_adv),
                     "m_pred": predict_labels(target, x_adv)},
                    {"params": attack.params(), "n": len(x)})

        preds[(s, a, atk, e)] = run.unit("characterize", f"s{s}-{a}-{atk}-eps{e}", craft,
                                         {"run": ident, "params": cfg})[0]
    # Examples successful on the T of every approach, per (seed, attack, ε).
    common: dict[tuple, torch.Tensor] = {}
    for s, _, atk, e in units:
        if (s, atk, e) not in common:
            ok = torch.ones(len(y), dtype=torch.bool)
            for b in defenses:
                ok &= preds[(s, b, atk, e)]["t_pred"] != y
            common[(s, atk, e)] = ok
    rows = []
    for a in defenses:
        for atk in CHARACTERIZE_ATTACKS:
            for e in settings["eps"]:
                per_seed = []
                for s in seeds:
                    mask = common[(s, atk, e)]
                    p = preds[(s, a, atk, e)]
                    t, m, yy = p["t_pred"][mask], p["m_pred"][mask], y[mask]
                    per_seed.append({"dr": disagreement_rate(t, m, yy),
                                     "iar": inefficient_rate(t, m, yy)})
                rows.append(aggregate("characterize", a, atk, e, per_seed, seeds=seeds))
    return rows

