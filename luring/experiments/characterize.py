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
from luring.experiments.context import Result, RunContext
from luring.metrics import disagreement_rate, inefficient_rate
from luring.models import predict_labels
from luring.utils import progress

__all__ = ["SUMMARY", "run", "departures", "CHARACTERIZE_ATTACKS"]

#: The experiment in one line (the CLI's help).
SUMMARY = "section 3: DR and IAR of FGSM, PGD, MIM, MIM-L2 (figure 2)"


CHARACTERIZE_ATTACKS = ("fgsm", "pgd", "mim", "mim-l2")


def run(ctx: RunContext) -> Result:
    """Run (or reuse) every characterisation unit; return result rows
    ``{"experiment": "characterize", "approach", "attack", "eps", "n", "dr", "iar", ...}``
    with the per-seed values aggregated (see :func:`~luring.experiments.common.aggregate`).
    Each unit's identity is the images' and models' (``ctx.images``) with its attack
    parameters."""
    settings, seed, target, defenses = ctx.settings, ctx.seed, ctx.target, ctx.defenses
    cfg = settings["characterize"]
    x, y, ident = ctx.images(cfg["n"], "characterize")
    y = y.cpu()
    units = [(s, a, atk, e) for s, a in ctx.pairs() for atk in CHARACTERIZE_ATTACKS
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

        preds[(s, a, atk, e)] = ctx.run.unit("characterize", f"s{s}-{a}-{atk}-eps{e}", craft,
                                             {"run": ident, "params": cfg})[0]
    if not ctx.final:
        return Result()
    seeds = ctx.seeds
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
    return Result(rows=rows)


def departures(settings: dict[str, Any]) -> list[str]:
    """None of its own (its settings are the profile's, disclosed with the protocol)."""
    return []

